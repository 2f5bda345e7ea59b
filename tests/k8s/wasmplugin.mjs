// Validates WasmPlugin objects against Istio's WasmPlugin CRD schema as
// compiled by @kubernetes-models/istio (installed by `scripts/setup.sh k8s`).
// Usage: node wasmplugin.mjs NODE_MODULES < [{what, doc}, ...]
// Prints [{what, ok, error?}, ...].
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const modules = process.argv[2];
const model = join(modules, "@kubernetes-models/istio/extensions.istio.io/v1alpha1/WasmPlugin.js");
const { WasmPlugin } = await import(pathToFileURL(model).href);
const input = JSON.parse(readFileSync(0, "utf8"));
const out = input.map(({ what, doc }) => {
  try {
    new WasmPlugin(doc).validate();
    return { what, ok: true };
  } catch (e) {
    return { what, ok: false, error: String(e.message ?? e) };
  }
});
console.log(JSON.stringify(out));
