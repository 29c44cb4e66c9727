// Talking to the gateway: the same JSON API any client uses, with the key the user signed in with.
// The key lives in sessionStorage (gone when the tab closes) and travels only in the Authorization header,
// never in a URL.

const KEY = "switchyard.key";
const ME = "switchyard.me";

/** The signed-in session ({key, me}) or null. */
export function session() {
  const key = sessionStorage.getItem(KEY);
  let me = null;
  try {
    me = JSON.parse(sessionStorage.getItem(ME) || "null");
  } catch {
    me = null;
  }
  return key && me ? { key, me } : null;
}

export function remember(key, me) {
  sessionStorage.setItem(KEY, key);
  sessionStorage.setItem(ME, JSON.stringify(me));
}

export function forget() {
  sessionStorage.removeItem(KEY);
  sessionStorage.removeItem(ME);
}

/** An API error: its HTTP status and the OpenAI-shaped error object. */
export class ApiError extends Error {
  constructor(status, error) {
    super((error && error.message) || `HTTP ${status}`);
    this.status = status;
    this.code = error && error.code;
    this.type = error && error.type;
  }
}

/** Call the API: JSON in, JSON out; a non-2xx answer throws ApiError. A 401 ends the session. */
export async function api(path, { method = "GET", query, body, key, signal } = {}) {
  const url = new URL(path, location.origin);
  for (const [name, value] of Object.entries(query || {})) {
    if (value !== null && value !== undefined && value !== "") url.searchParams.set(name, String(value));
  }
  const token = key || (session() || {}).key;
  const headers = { Accept: "application/json" };
  if (token) headers.Authorization = "Bearer " + token;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const res = await fetch(url, {
    method, headers, signal, cache: "no-store", credentials: "omit",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!res.ok) {
    if (res.status === 401 && !key) {
      forget();
      window.dispatchEvent(new Event("switchyard:signed-out"));
    }
    throw new ApiError(res.status, (data && data.error) || { message: text || res.statusText });
  }
  return data;
}
