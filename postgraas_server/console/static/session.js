// The API token of this tab: sessionStorage lives as long as the tab and is seen by no other tab or
// site, and unlike localStorage it is gone when the tab closes. It never goes into a URL.

const KEY = "postgraas.token";
// Where sessionStorage is refused (some privacy modes), the token lives in this page's memory only.
let memoryToken = null;

export function getToken() {
  try {
    return sessionStorage.getItem(KEY);
  } catch {
    return memoryToken;
  }
}

export function setToken(token) {
  memoryToken = token;
  try {
    sessionStorage.setItem(KEY, token);
  } catch {
    /* memory only */
  }
}

export function forgetToken() {
  memoryToken = null;
  try {
    sessionStorage.removeItem(KEY);
  } catch {
    /* nothing stored */
  }
}
