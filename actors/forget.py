"""Forgetting a user (a privacy request): every part of the model that is keyed by the
user id loses it.  Pure, synchronous code.

What goes (:func:`forget_user`): the user's interaction history (the seen set that
excludes items from their recommendations), their recent and last items (the
``h.item`` features and the sequence signals' input), their last ``user_features``,
their open impressions (never learned) and the resolved ones remembered for late
clicks, their next-item evaluations still waiting, whatever a ``model.components``
part keyed by them (its optional ``forget_user(user)``), and the parameters of the
features made of the user id alone: the weight of ``user=<id>``, the weights of its
crosses with the catalog's item-side values (``user x i.genre=war``, ...) and its
factor vector, back to their never-learned state.

What stays is not the user's: weights of shared features (items, item and user
features, recent items, signals), co-occurrence and transition counts, trends, the
mixture and the progressive metrics, which the user's events moved together with
everyone else's.  In a hashed space a slot of the user's id may be shared with another
feature by collision; that feature loses its learned value too (rare at 2^22 slots).

The caller makes sure none of the user's events is still on its way to being learned
(the embedded System forgets between two requests, once everything is learned).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from actors.features import USER_NS
from actors.model import Model
from actors.murmur import cross_hash
from runtime.errors import BadInput


class UnknownUser(BadInput, LookupError):
    """A user the model keeps nothing of."""

    http_status = 404


def knows_user(model: Model, user: str) -> bool:
    """Whether any part of the model holds something of ``user``."""
    users = model.users
    held = (users.history, users.profiles, users.recent, users.sequences)
    if any(user in part for part in held) or model.metrics.next_item.waiting_for(user):
        return True
    open_, closed = model.labels.impressions_of(user)
    return bool(open_ or closed)


def user_coordinates(model: Model, user: str) -> tuple[np.ndarray, int | None]:
    """The weight indices of the features made of the user id alone (``user=<id>`` and its
    crosses with every item-side value the catalog has), and its factor row (None:
    no factors)."""
    space, catalog = model.space, model.catalog
    raw = np.uint32(space.value_hash(USER_NS, user))
    parts = [np.array([raw], np.uint32)]
    user_ns = space.ns_hash(USER_NS)
    ns, item_raw, x = catalog.view()
    for a, b in space.crosses:
        if a == user_ns:
            values = np.unique(item_raw[(ns == b) & (x != 0)])
            parts.append(cross_hash(raw, values).astype(np.uint32))
    indices = np.unique(space.index(np.concatenate(parts)))
    factors = model.factors
    return indices, (int(raw) & factors.params.mask) if factors is not None else None


def reset_user_parameters(model: Model, user: str) -> int:
    """Put the parameters of the user id's own features back to never learned; how many
    coordinates (linear weights and the factor vector) were learned before."""
    indices, factor_row = user_coordinates(model, user)
    store = model.store
    learned = int(np.count_nonzero(store.n[indices]))
    store.n[indices] = 0.0
    store.w[indices] = 0.0
    if store.z.size:
        store.z[indices] = 0.0
    factors = model.factors
    if factors is not None and factor_row is not None:
        learned += int(factors.active[factor_row])
        factors.v[factor_row] = 0.0
        factors.n[factor_row] = 0.0
        factors.active[factor_row] = False
        factors.changed(np.atleast_1d(np.asarray(factor_row, np.int64)))
    return learned


def forget_user(model: Model, user: str) -> dict[str, Any]:
    """Remove every part of ``user`` the model keeps (module docstring); what was removed."""
    users = model.users
    seen = users.history.pop(user, {})
    recent = users.recent.pop(user, [])
    users.sequences.pop(user, None)
    profile = users.profiles.pop(user, None)
    users.profile_names.pop(user, None)
    open_, closed = model.labels.forget_user(user)
    if model.experiments is not None:
        model.experiments.forget_user(user)
    for component in model.components.values():
        forget = getattr(component, "forget_user", None)
        if forget is not None:
            forget(user)
    return {
        "items_seen": len(seen),
        "recent_items": len(recent),
        "profile": profile is not None,
        "open_impressions": open_,
        "resolved_impressions": closed,
        "pending_evaluations": model.metrics.next_item.forget(user),
        "parameters_reset": reset_user_parameters(model, user),
    }
