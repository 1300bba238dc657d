// The studio's service worker: the app shell (the page, its modules, styles, icons and the vendored libraries)
// cached per release, so the studio opens with the network off. The server fills in RELEASE (a hash of every
// static file) and SHELL when it serves /sw.js: a new release is a new worker with a new cache, and the old cache
// is deleted when it takes over.
//
// Never cached: the API (/v1/...), signed file links (local /v1/files/..., Supabase Storage on another origin) and
// anything from another origin. Pages are network-first (the cached page only when the network is down); shell
// files are cache-first.

const RELEASE = "__RELEASE__";
const SHELL = __SHELL__;
const PREFIX = "studio-shell-";
const CACHE = `${PREFIX}${RELEASE}`;

self.addEventListener("install", (event) => {
  event.waitUntil(
    caches
      .open(CACHE)
      .then((cache) => cache.addAll(SHELL.map((path) => new Request(path, { cache: "reload" }))))
      .then(() => self.skipWaiting()),
  );
});

self.addEventListener("activate", (event) => {
  event.waitUntil(
    caches
      .keys()
      .then((keys) => Promise.all(keys.filter((key) => key.startsWith(PREFIX) && key !== CACHE).map((key) => caches.delete(key))))
      .then(() => self.clients.claim()),
  );
});

self.addEventListener("fetch", (event) => {
  const request = event.request;
  if (request.method !== "GET") return;
  const url = new URL(request.url);
  if (url.origin !== self.location.origin || url.pathname.startsWith("/v1/")) return;
  if (request.mode === "navigate") {
    event.respondWith(fetch(request).catch(() => caches.open(CACHE).then((cache) => cache.match("/"))));
    return;
  }
  if (!url.search && SHELL.includes(url.pathname)) {
    event.respondWith(caches.open(CACHE).then((cache) => cache.match(url.pathname)).then((hit) => hit || fetch(request)));
  }
});
