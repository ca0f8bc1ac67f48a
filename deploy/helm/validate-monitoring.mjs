// Validates Prometheus Operator objects (ServiceMonitor, PodMonitor, PrometheusRule) against the
// operator's CRD schemas, which kubernetes-validate does not carry: the schemas compiled in npm's
// @kubernetes-models/prometheus-operator (installed by dev/setup under PICKET_K8S_TOOLS).
//
//   node deploy/helm/validate-monitoring.mjs TOOLS_DIR < objects.json   (a JSON array)
//
// Exits 1 naming each object that does not validate, and the field.
import { readFileSync } from "node:fs";
import { pathToFileURL } from "node:url";

const tools = process.argv[2];
const models = await import(
  pathToFileURL(`${tools}/node_modules/@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/index.js`)
);
const objects = JSON.parse(readFileSync(0, "utf8"));
let failed = 0;
for (const object of objects) {
  const name = `${object.kind}/${object.metadata?.name}`;
  const Model = object.apiVersion === "monitoring.coreos.com/v1" ? models[object.kind] : undefined;
  if (!Model) {
    console.error(`ERROR ${name}: no schema for ${object.apiVersion} ${object.kind}`);
    failed++;
    continue;
  }
  try {
    new Model(object).validate();
    console.error(`INFO ${name} passed against the Prometheus Operator's schema`);
  } catch (err) {
    console.error(`ERROR ${name} did not validate: ${err.message}`);
    failed++;
  }
}
process.exit(failed ? 1 : 0);
