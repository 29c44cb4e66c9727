// Building the page: elements from data, never HTML from data. Every string the API returns goes into a text
// node or an attribute value, so nothing it contains is ever parsed as markup (and the page's CSP forbids
// inline script besides).

const SVG_NS = "http://www.w3.org/2000/svg";

function fill(el, attrs, children) {
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") {
      el.addEventListener(name.slice(2), value);
    } else if (name === "style" && typeof value === "object") {
      Object.assign(el.style, value); // CSSOM, which the CSP allows (a style attribute would be refused)
    } else if (name === "value" && "value" in el) {
      el.value = value;
    } else {
      el.setAttribute(name, value === true ? "" : String(value));
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else if (child instanceof Node) el.appendChild(child);
    else el.appendChild(document.createTextNode(String(child)));
  }
}

/** An HTML element: h("td", {class: "num"}, "text", otherNode, [more]). */
export function h(tag, attrs, ...children) {
  return fill(document.createElement(tag), attrs, children);
}

/** An SVG element, the same way. */
export function s(tag, attrs, ...children) {
  return fill(document.createElementNS(SVG_NS, tag), attrs, children);
}

/** Replace an element's children. */
export function put(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

const dash = "—";

export const fmt = {
  usd(v) {
    if (v === null || v === undefined) return dash;
    if (v === 0) return "$0";
    const a = Math.abs(v);
    if (a >= 1) return "$" + v.toFixed(2);
    if (a >= 0.01) return "$" + v.toFixed(4);
    return "$" + v.toFixed(Math.min(12, 1 - Math.floor(Math.log10(a)))); // two significant digits
  },
  ms(v) {
    if (v === null || v === undefined) return dash;
    if (v >= 10000) return (v / 1000).toFixed(1) + " s";
    if (v >= 100) return Math.round(v) + " ms";
    if (v >= 1) return v.toFixed(1) + " ms";
    return v.toFixed(2) + " ms";
  },
  num(v) {
    return v === null || v === undefined ? dash : Number(v).toLocaleString("en-US");
  },
  pct(v, digits = 1) {
    return v === null || v === undefined ? dash : (v * 100).toFixed(digits) + "%";
  },
  time(epoch) {
    if (!epoch) return dash;
    const d = new Date(epoch * 1000);
    return d.toISOString().replace("T", " ").slice(0, 19) + "Z";
  },
  clock(epoch) {
    return epoch ? new Date(epoch * 1000).toISOString().slice(11, 19) : dash;
  },
  ago(epoch) {
    if (!epoch) return dash;
    const s = Math.max(0, Date.now() / 1000 - epoch);
    if (s < 60) return Math.round(s) + " s ago";
    if (s < 3600) return Math.round(s / 60) + " min ago";
    if (s < 86400) return Math.round(s / 3600) + " h ago";
    return Math.round(s / 86400) + " d ago";
  },
  score(v) {
    return v === null || v === undefined ? dash : Number(v).toFixed(2);
  },
};

/** A small coloured label for an outcome or state. */
export function badge(text, kind) {
  return h("span", { class: "badge " + (kind || tone(text)) }, text ?? dash);
}

/** Which colour a status word gets. */
export function tone(word) {
  switch (word) {
    case "success": case "succeeded": case "completed": case "closed": case "healthy": case "admitted": case "active":
      return "ok";
    case "failed": case "denied": case "open": case "forced_open": case "down": case "revoked": case "timeout":
    case "expired": case "error":
      return "bad";
    case "half_open": case "degraded": case "in_progress": case "queued": case "requested": case "cancelled":
    case "interrupted": case "rate_limited": case "dispatched":
      return "warn";
    default:
      return "neutral";
  }
}

/** A key/value grid: [["Label", value], ...]; rows with undefined values are skipped. */
export function facts(rows) {
  return h("dl", { class: "facts" }, rows.filter((r) => r && r[1] !== undefined).map(([k, v]) => [
    h("dt", {}, k), h("dd", {}, v === null ? dash : v),
  ]));
}

/** A table: columns [{label, cls}], rows of cells (nodes or text); rowAttrs(row index) adds attributes. */
export function table(columns, rows, rowAttrs) {
  return h("table", {},
    h("thead", {}, h("tr", {}, columns.map((c) => h("th", { class: c.cls }, c.label)))),
    h("tbody", {}, rows.length === 0
      ? h("tr", {}, h("td", { colspan: columns.length, class: "empty" }, "Nothing yet."))
      : rows.map((cells, i) => h("tr", rowAttrs ? rowAttrs(i) : {},
        cells.map((cell, j) => h("td", { class: columns[j].cls }, cell))))));
}

/** An error box for a failed call. */
export function problem(err) {
  const message = err && err.message ? err.message : String(err);
  const status = err && err.status ? ` (${err.status})` : "";
  return h("div", { class: "problem", role: "alert" }, message + status);
}

export const dashText = dash;
