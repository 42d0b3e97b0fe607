// freshrank dashboard: asks /v1/dashboard/series for the daemon's whole history (kept since
// its start), then polls it and /v1/dashboard/top every second and draws them with uPlot; the form asks /v1/recommend for one user's items with explanations,
// and the item inspector asks /v1/items/{item} (any item name on the page opens it); with
// experiments, the series' latest report fills the experiments view (intervals on one scale).
// Plain JS, no build step. Test hooks: window.freshrankDashboard (points per chart, polls,
// the time labels each chart's x-axis shows).
"use strict";

(() => {
  const POLL_MS = 1000;
  const TOP_K = 10;
  const CHARTS = [
    { id: "throughput", title: "Throughput", unit: "events/s" },
    { id: "logloss", title: "Progressive logloss", unit: "lower is better" },
    { id: "auc", title: "Progressive AUC", unit: "labelled events" },
    { id: "ranking", title: "Hit rate and NDCG", unit: "rank-evaluated events" },
    { id: "f1", title: "Precision, recall and F1", unit: "next-item at k; labelled events" },
    { id: "freshness", title: "Freshness latency", unit: "ms, event to learned weights" },
    { id: "queues", title: "Queue depths", unit: "messages waiting per channel" },
    { id: "shards", title: "Shard sizes", unit: "non-zero weights per learner shard" },
  ];
  const PALETTE = ["#2563eb", "#16a34a", "#f59e0b", "#dc2626", "#7c3aed", "#0891b2", "#db2777", "#65a30d", "#78716c"];

  const MIN_SPAN_S = 60; // one sample still gets an axis of a minute, not of years
  const history = { t: [], series: {}, since: 0, capacity: 17280, now: null };
  const charts = {};
  const api = { points: {}, axisLabels: {}, polls: 0, topPolls: 0, failures: 0, history, charts };
  window.freshrankDashboard = api;

  // ---------------------------------------------------------------- helpers

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs)) {
      if (name === "class") node.className = value;
      else node.setAttribute(name, value);
    }
    for (const child of children) node.append(child);
    return node;
  }

  function fmt(value) {
    if (value === null || value === undefined || Number.isNaN(value)) return "–";
    const abs = Math.abs(value);
    if (abs >= 1e9) return (value / 1e9).toFixed(2) + "G";
    if (abs >= 1e6) return (value / 1e6).toFixed(2) + "M";
    if (abs >= 1e4) return (value / 1e3).toFixed(1) + "k";
    if (abs >= 100 || Number.isInteger(value)) return value.toFixed(0);
    return value.toPrecision(3);
  }

  function duration(seconds) {
    if (seconds === null || seconds === undefined) return "–";
    const s = Math.floor(seconds);
    const h = Math.floor(s / 3600);
    const m = Math.floor((s % 3600) / 60);
    if (h) return `${h}h ${String(m).padStart(2, "0")}m`;
    if (m) return `${m}m ${String(s % 60).padStart(2, "0")}s`;
    return `${s}s`;
  }

  const pad = (n) => String(n).padStart(2, "0");

  // Local wall-clock time, with seconds on a short axis and the date on one over a day.
  function clockTime(seconds, span) {
    const d = new Date(seconds * 1000);
    let text = `${pad(d.getHours())}:${pad(d.getMinutes())}`;
    if (span < 600) text += `:${pad(d.getSeconds())}`;
    if (span > 86400) text = `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${text}`;
    return text;
  }

  // From the first sample kept to now (the server's clock): the axis spans the history.
  function timeRange() {
    const now = history.now ?? history.t[history.t.length - 1];
    const first = history.t.length ? history.t[0] : now;
    return [Math.min(first, now - MIN_SPAN_S), now];
  }

  async function getJSON(url) {
    const response = await fetch(url, { cache: "no-store" });
    const body = await response.json();
    if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
    return body;
  }

  function setStatus(status, text) {
    const node = document.getElementById("status");
    node.dataset.status = status;
    node.textContent = text;
  }

  // ---------------------------------------------------------------- time series

  function merge(payload) {
    history.capacity = payload.capacity || history.capacity;
    history.now = Math.max(payload.now ?? 0, ...payload.t.slice(-1));
    for (const key of Object.keys(payload.series)) {
      if (!(key in history.series)) history.series[key] = new Array(history.t.length).fill(null);
    }
    payload.t.forEach((t, i) => {
      history.t.push(t);
      for (const [key, values] of Object.entries(history.series)) {
        const incoming = payload.series[key];
        values.push(incoming ? incoming[i] : null);
      }
    });
    const excess = history.t.length - history.capacity;
    if (excess > 0) {
      history.t.splice(0, excess);
      for (const values of Object.values(history.series)) values.splice(0, excess);
    }
    if (payload.t.length) history.since = payload.t[payload.t.length - 1];
  }

  function keysOf(chartId) {
    return Object.keys(history.series).filter((key) => key.startsWith(chartId + "/"));
  }

  function buildCards() {
    const container = document.getElementById("charts");
    for (const spec of CHARTS) {
      const plot = el("div", { class: "plot" }, el("div", { class: "waiting" }, "waiting for data…"));
      const card = el(
        "article",
        { class: "card chart", id: `chart-${spec.id}`, "data-points": "0" },
        el("h2", {}, spec.title + " ", el("small", {}, spec.unit)),
        plot,
      );
      container.append(card);
      charts[spec.id] = { card, plot, uplot: null, keys: "" };
      api.points[spec.id] = 0;
    }
  }

  function latest(values) {
    for (let i = values.length - 1; i >= 0; i -= 1) if (values[i] !== null) return values[i];
    return null;
  }

  // The legend shows the value under the cursor, or the latest one when the cursor is away.
  function legendValue(u, value, seriesIndex, index) {
    return fmt(index === null ? latest(u.data[seriesIndex]) : value);
  }

  function legendTime(u, value, seriesIndex, index) {
    return index === null ? "latest" : new Date(value * 1000).toLocaleTimeString();
  }

  function timeLabels(chartId, splits) {
    const [min, max] = timeRange();
    const labels = splits.map((t) => clockTime(t, max - min));
    api.axisLabels[chartId] = labels;
    return labels;
  }

  function makePlot(chartId, chart, keys, data) {
    const opts = {
      width: Math.max(chart.plot.clientWidth, 300),
      height: 200,
      scales: { x: { time: true, range: () => timeRange() } },
      axes: [
        { values: (u, splits) => timeLabels(chartId, splits) },
        { size: 56, values: (u, splits) => splits.map(fmt) },
      ],
      series: [
        { value: legendTime },
        ...keys.map((key, i) => ({
          label: key.slice(key.indexOf("/") + 1),
          stroke: PALETTE[i % PALETTE.length],
          width: 1.5,
          value: legendValue,
        })),
      ],
    };
    chart.plot.replaceChildren();
    return new uPlot(opts, data, chart.plot);
  }

  function draw(chartId) {
    const chart = charts[chartId];
    const keys = keysOf(chartId);
    const columns = keys.map((key) => history.series[key]);
    const points = columns.reduce((sum, values) => sum + values.filter((v) => v !== null).length, 0);
    api.points[chartId] = points;
    chart.card.dataset.points = String(points);
    if (!keys.length) return;
    const data = [history.t, ...columns];
    const signature = keys.join("\n");
    if (chart.uplot && chart.keys === signature) {
      chart.uplot.setData(data);
      return;
    }
    if (chart.uplot) chart.uplot.destroy();
    chart.uplot = makePlot(chartId, chart, keys, data);
    chart.keys = signature;
  }

  function renderHeadline(headline) {
    for (const node of document.querySelectorAll("#headline dd")) {
      const value = headline[node.dataset.field];
      node.textContent = node.dataset.field === "uptime_s" ? duration(value) : fmt(value);
    }
    if (headline.status === "failed") setStatus("failed", `failed: ${headline.failed}`);
    else setStatus("ok", "running");
  }

  function renderRejected(rejected) {
    const body = document.querySelector("#rejected tbody");
    const reasons = rejected.by_reason || [];
    const most = Math.max(1, ...reasons.map((r) => r.count));
    body.replaceChildren(
      ...reasons.map((r) =>
        el(
          "tr",
          {},
          el("td", { class: "reason" }, r.reason),
          el("td", { class: "num" }, fmt(r.count)),
          el("td", { style: "width: 25%" }, el("div", { class: "bar", style: `width: ${(100 * r.count) / most}%` })),
        ),
      ),
    );
    document.getElementById("rejected-empty").hidden = reasons.length > 0;
    document.getElementById("rejected-total").textContent = rejected.total ? `${fmt(rejected.total)} in all` : "";
  }

  async function pollSeries() {
    const payload = await getJSON(`/v1/dashboard/series?since=${history.since}`);
    merge(payload);
    for (const spec of CHARTS) draw(spec.id);
    renderHeadline(payload.headline);
    const sampling = document.getElementById("sampling");
    sampling.textContent = `${fmt(payload.interval_s)} s`;
    sampling.title = `statistics() took ${fmt(payload.sample_cost_ms)} ms`;
    renderRejected(payload.rejected);
    renderExperiments(payload.experiments);
    api.polls += 1;
  }

  // ---------------------------------------------------------------- experiments

  const METRIC_COLUMNS = [/^hr@/, /^ndcg@/, /^ctr$/];

  // A value with its 95% interval, and the interval as a bar on the column's scale [0, top].
  function estimateCell(estimate, top) {
    if (!estimate || estimate.value === null) return el("td", { class: "muted" }, "no samples yet");
    const interval = estimate.low === null ? "interval: too few samples" : `${fmt(estimate.low)} – ${fmt(estimate.high)}`;
    const bar = el("div", { class: "ci" });
    if (estimate.low !== null && top > 0) {
      const left = (100 * estimate.low) / top;
      bar.append(el("div", { class: "span", style: `left: ${left}%; width: ${(100 * estimate.high) / top - left}%` }));
    }
    bar.append(el("div", { class: "point", style: `left: ${top > 0 ? (100 * estimate.value) / top : 0}%` }));
    return el(
      "td",
      { class: "estimate-cell" },
      el(
        "div",
        { class: "estimate" },
        el("span", { class: "value" }, `${fmt(estimate.value)} `, el("span", { class: "interval" }, `(n = ${fmt(estimate.n)})`)),
        el("span", { class: "interval" }, interval),
        bar,
      ),
    );
  }

  function renderExperiments(report) {
    const view = document.getElementById("experiments");
    api.experiments = report || null;
    view.hidden = !report;
    if (!report) return;
    const variants = Object.entries(report.variants);
    const columns = METRIC_COLUMNS.map((pattern) => {
      const key = Object.keys(variants[0][1]).find((name) => pattern.test(name));
      const top = Math.max(0, ...variants.map(([, v]) => v[key]?.high ?? v[key]?.value ?? 0));
      return { key, top };
    });
    const head = view.querySelectorAll("thead th");
    columns.forEach((column, i) => {
      if (column.key) head[3 + i].textContent = column.key === "ctr" ? "click-through" : column.key.replace("ndcg", "NDCG").replace("hr", "HR");
    });
    view.querySelector("tbody").replaceChildren(
      ...variants.map(([name, v]) =>
        el(
          "tr",
          { class: "variant", "data-variant": name },
          el("td", {}, name),
          el("td", { class: "num" }, fmt(v.share)),
          el("td", {}, v.model === "base" ? "base model" : "own model"),
          ...columns.map((column) => estimateCell(v[column.key], column.top)),
        ),
      ),
    );
    document.getElementById("experiments-note").textContent = `seed ${report.seed}; 95% intervals`;
    const interleaving = document.getElementById("experiments-interleaving");
    interleaving.hidden = !report.interleaving;
    if (report.interleaving) {
      const rate = report.interleaving.win_rate;
      const interval = rate.low === null ? "" : ` (95%: ${fmt(rate.low)} – ${fmt(rate.high)})`;
      interleaving.textContent =
        `interleaving: ${rate.variant} won ${fmt(rate.value)} of ${fmt(rate.n)} decided answers${interval}; ` +
        `${fmt(report.interleaving.ties)} ties, ${fmt(report.interleaving.lists_served)} answers served`;
    }
    if (!charts.experiments) {
      const card = document.getElementById("chart-experiments");
      charts.experiments = { card, plot: card.querySelector(".plot"), uplot: null, keys: "" };
    }
    draw("experiments");
    api.experimentRenders = (api.experimentRenders || 0) + 1;
  }

  // ---------------------------------------------------------------- top items

  async function pollTop() {
    const top = await getJSON(`/v1/dashboard/top?k=${TOP_K}`);
    const body = document.querySelector("#top-items tbody");
    body.replaceChildren(
      ...top.items.map((item, i) =>
        el(
          "tr",
          {},
          el("td", {}, String(i + 1)),
          el("td", {}, itemLink(item.item)),
          el("td", { class: "num" }, fmt(item.recent)),
          el("td", { class: "num" }, fmt(item.total)),
          el("td", { class: "tags" }, item.features.join(", ")),
        ),
      ),
    );
    const empty = document.getElementById("top-empty");
    empty.hidden = top.items.length > 0;
    empty.textContent = top.available ? "no interactions yet" : top.reason;
    document.getElementById("top-note").textContent = top.available
      ? `recent: interactions decayed with a ${top.half_life_s} s half-life`
      : "";
    api.topPolls += 1;
  }

  // ---------------------------------------------------------------- recommendations

  function explanation(entries) {
    return el(
      "ul",
      { class: "features" },
      ...(entries || []).map((entry) => {
        const sign = entry.contribution < 0 ? "negative" : "positive";
        const chip = el(
          "li",
          { class: `feature ${sign}`, title: entry.part ? `${entry.part} term` : "" },
          el("span", { class: "name" }, entry.feature),
          el("span", { class: "value" }, (entry.contribution >= 0 ? "+" : "") + entry.contribution.toFixed(3)),
        );
        if (entry.part) chip.append(el("span", { class: "part" }, entry.part));
        return chip;
      }),
    );
  }

  async function recommend(event) {
    event.preventDefault();
    const error = document.getElementById("recommend-error");
    const table = document.getElementById("recommend-result");
    const params = new URLSearchParams({
      user: document.getElementById("recommend-user").value.trim(),
      k: document.getElementById("recommend-k").value || "10",
      explain: "1",
    });
    try {
      const result = await getJSON(`/v1/recommend?${params}`);
      document.getElementById("recommend-variant").textContent = result.variant ? `ranked by variant ${result.variant}` : "";
      table.querySelector("tbody").replaceChildren(
        ...result.items.map((item, i) =>
          el(
            "tr",
            { class: "recommendation" },
            el("td", {}, String(i + 1)),
            el("td", {}, itemLink(item.item), ...(item.team ? [el("span", { class: "team" }, item.team)] : [])),
            el("td", { class: "num" }, item.score.toFixed(4)),
            el("td", {}, explanation(item.explanation)),
          ),
        ),
      );
      table.hidden = false;
      error.hidden = true;
    } catch (failure) {
      error.textContent = failure.message;
      error.hidden = false;
      table.hidden = true;
    }
  }

  // ---------------------------------------------------------------- one item

  function itemLink(item) {
    const link = el("button", { type: "button", class: "item-link", title: "inspect this item" }, item);
    link.addEventListener("click", () => {
      document.getElementById("inspect-item").value = item;
      inspect();
    });
    return link;
  }

  function scoredRows(entries) {
    if (!entries.length) return [el("tr", {}, el("td", { class: "muted" }, "none yet"))];
    return entries.map((entry) =>
      el("tr", { class: "scored" }, el("td", {}, itemLink(entry.item)), el("td", { class: "num" }, fmt(entry.score))),
    );
  }

  async function inspect(event) {
    if (event) event.preventDefault();
    const error = document.getElementById("inspect-error");
    const result = document.getElementById("inspect-result");
    const item = document.getElementById("inspect-item").value.trim();
    try {
      const found = await getJSON(`/v1/items/${encodeURIComponent(item)}?k=10`);
      document.getElementById("inspect-exposure").replaceChildren(
        ...Object.entries(found.exposure).map(([name, value]) =>
          el("div", {}, el("dt", {}, name.replaceAll("_", " ")), el("dd", { "data-field": name }, fmt(value))),
        ),
      );
      document.getElementById("inspect-features").replaceChildren(
        ...found.features.map((f) => {
          const sign = f.weight * f.value < 0 ? "negative" : "positive";
          return el(
            "li",
            { class: `feature ${sign}` },
            el("span", { class: "name" }, f.feature),
            el("span", { class: "value" }, (f.weight >= 0 ? "+" : "") + f.weight.toFixed(3)),
          );
        }),
      );
      document.querySelector("#inspect-neighbours tbody").replaceChildren(...scoredRows(found.neighbours));
      document.querySelector("#inspect-successors tbody").replaceChildren(...scoredRows(found.successors));
      result.hidden = false;
      error.hidden = true;
    } catch (failure) {
      error.textContent = failure.message;
      error.hidden = false;
      result.hidden = true;
    }
  }

  // ---------------------------------------------------------------- main

  function every(milliseconds, poll) {
    const loop = async () => {
      try {
        await poll();
      } catch (failure) {
        api.failures += 1;
        setStatus("unreachable", `unreachable: ${failure.message}`);
      }
      setTimeout(loop, milliseconds);
    };
    loop();
  }

  buildCards();
  document.getElementById("recommend-form").addEventListener("submit", recommend);
  document.getElementById("inspect-form").addEventListener("submit", inspect);
  window.addEventListener("resize", () => {
    for (const chart of Object.values(charts)) {
      if (chart.uplot) chart.uplot.setSize({ width: Math.max(chart.plot.clientWidth, 300), height: 200 });
    }
  });
  every(POLL_MS, pollSeries);
  every(POLL_MS, pollTop);
})();
