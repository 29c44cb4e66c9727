// Loaded into the Portkey gateway's Node process by `make bench` (node --import): a fix for one bug of the
// gateway's HTTP adapter, nothing else.
//
// @hono/node-server replaces the global Response with a lighter class. Built as `new Response(body, init)`
// with `init` a Response that fetch() returned, that class keeps the fetched response's Headers object,
// which fetch made immutable. A standard Response copies the headers into a new, mutable object. The
// gateway's streaming path does exactly that construction and then appends its own headers, so on Node
// every streamed request failed with a 500 ("TypeError: immutable"). Here the replacement class gets a copy
// of such headers first, as the standard constructor would make. Bodies, statuses and everything else are
// untouched.
const NativeResponse = globalThis.Response;
const defineProperty = Object.defineProperty;

Object.defineProperty = function (target, key, descriptor) {
  if (target === globalThis && key === "Response" && descriptor && typeof descriptor.value === "function"
      && descriptor.value !== NativeResponse) {
    const Light = descriptor.value;
    class CopyingResponse extends Light {
      constructor(body, init) {
        if (init instanceof NativeResponse) {
          init = { status: init.status, statusText: init.statusText, headers: new Headers(init.headers) };
        }
        super(body, init);
      }
    }
    for (const name of Object.getOwnPropertyNames(Light)) {  // static members (Response.json, .error ...)
      if (!(name in CopyingResponse)) {
        defineProperty(CopyingResponse, name, Object.getOwnPropertyDescriptor(Light, name));
      }
    }
    descriptor = { ...descriptor, value: CopyingResponse };
    Object.defineProperty = defineProperty;  // only this one replacement
  }
  return defineProperty(target, key, descriptor);
};
