// Validates custom resources the Kubernetes schemas do not cover (KEDA ScaledObject, Prometheus Operator
// ServiceMonitor) with the compiled JSON-schema validators of the @kubernetes-models npm packages.
//
//   node crd_validate.mjs <node_modules dir> < objects.json      (a JSON array of manifests)
//
// Strict like `kubernetes-validate --strict`: the packages' validators ignore unknown fields, so each object
// is wrapped in a Proxy that records which fields the validator looked at; a field it never read is not in
// the schema and is reported. Prints one line per problem; exits 1 if there is any.
import { readFileSync } from "node:fs";
import { pathToFileURL } from "node:url";
import { join } from "node:path";

const modules = process.argv[2];
const KINDS = {
  "keda.sh/v1alpha1/ScaledObject": ["@kubernetes-models/keda", "_schemas/ComGithubKedacoreKedaV2ApisKedaV1alpha1ScaledObject.js"],
  "monitoring.coreos.com/v1/ServiceMonitor": ["@kubernetes-models/prometheus-operator", "_schemas/ComGithubPrometheusOperatorPrometheusOperatorPkgApisMonitoringV1ServiceMonitor.js"],
  "monitoring.coreos.com/v1/PrometheusRule": ["@kubernetes-models/prometheus-operator", "_schemas/ComGithubPrometheusOperatorPrometheusOperatorPkgApisMonitoringV1PrometheusRule.js"],
};

function watched(value, path, seen, proxies = seen.proxies) {
  if (value === null || typeof value !== "object") return value;
  if (proxies.has(value)) return proxies.get(value);  // one proxy (and one record of reads) per object
  const node = { keys: Array.isArray(value) ? [] : Object.keys(value), read: new Set() };
  seen.push([path, node]);
  const proxy = new Proxy(value, {
    get(target, key) {
      if (typeof key === "string") node.read.add(key);
      const v = Reflect.get(target, key);
      return typeof key === "string" && Object.prototype.hasOwnProperty.call(target, key)
        ? watched(v, `${path}/${key}`, seen) : v;
    },
    ownKeys(target) {
      // Enumerating an object's keys (a map such as labels or trigger metadata) reads them all.
      node.keys.forEach((k) => node.read.add(k));
      return Reflect.ownKeys(target);
    },
  });
  proxies.set(value, proxy);
  return proxy;
}

const objects = JSON.parse(readFileSync(0, "utf8"));
const problems = [];
for (const obj of objects) {
  const id = `${obj.kind}/${obj.metadata?.name}`;
  const entry = KINDS[`${obj.apiVersion}/${obj.kind}`];
  if (!entry) { problems.push(`${id}: no schema known for ${obj.apiVersion} ${obj.kind}`); continue; }
  const mod = await import(pathToFileURL(join(modules, entry[0], entry[1])).href);
  const seen = Object.assign([], { proxies: new WeakMap() });
  const ok = mod.validate(watched(obj, "", seen));
  if (!ok) for (const e of mod.validate.errors) problems.push(`${id}: ${e.instancePath || "/"} ${e.keyword} ${JSON.stringify(e.params)}`);
  for (const [path, node] of seen) {
    if (path.startsWith("/status")) continue;
    for (const k of node.keys) if (!node.read.has(k)) problems.push(`${id}: unknown field ${path}/${k}`);
  }
}
for (const p of problems) console.log(p);
process.exit(problems.length ? 1 : 0);
