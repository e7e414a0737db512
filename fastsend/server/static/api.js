// Requests to the service. The API key, when the service wants one, lives in this tab's
// sessionStorage and travels only as the X-API-Key header (images are fetched too, never linked).

const KEY_ITEM = "fastsend.apiKey";

/** The service answered 401: it wants a (different) API key. */
export class AuthError extends Error {}

export function setApiKey(key) {
  sessionStorage.setItem(KEY_ITEM, key);
}

function headers() {
  const key = sessionStorage.getItem(KEY_ITEM);
  return key ? { "X-API-Key": key } : {};
}

async function get(url) {
  const response = await fetch(url, { headers: headers() });
  if (response.status === 401) {
    throw new AuthError("the service wants an API key");
  }
  if (!response.ok) {
    let detail = response.statusText;
    try {
      detail = (await response.json()).detail ?? detail;
    } catch {
      // not JSON: keep the status text
    }
    throw new Error(`${response.status} ${detail}`);
  }
  return response;
}

/** GET a JSON document; `params` is a URLSearchParams or undefined. */
export async function getJson(path, params) {
  const query = params && params.toString();
  return (await get(query ? `${path}?${query}` : path)).json();
}

/** GET an image and return a blob: URL for it (revoke it with URL.revokeObjectURL). */
export async function getImageUrl(path) {
  return URL.createObjectURL(await (await get(path)).blob());
}

export const eventUrl = (id) => `/v2/events/${encodeURIComponent(id)}`;
export const thumbnailUrl = (id) => `/viewer/api/events/${encodeURIComponent(id)}/thumbnail`;
