// /docs: Swagger UI from the vendored bundle (vendor/swagger-ui), over this gateway's OpenAPI document.
// A file rather than an inline script, so /docs keeps a CSP without 'unsafe-inline' for scripts.
window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  layout: "BaseLayout",
  deepLinking: true,
  showExtensions: true,
  showCommonExtensions: true,
  validatorUrl: null, // the default would load a badge from validator.swagger.io
  presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset],
});
