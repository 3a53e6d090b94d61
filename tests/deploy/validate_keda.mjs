// Validates KEDA objects against KEDA's schemas, as compiled (ajv) by the npm package @kubernetes-models/keda.
// Usage: node validate_keda.mjs MODELS_DIR < objects.json, where MODELS_DIR holds node_modules/@kubernetes-models/keda
// (.ci/deploy-tools installs it into .deploy-tools) and objects.json is a JSON array of objects. Prints a JSON array:
// one entry per object, [] when it is valid, else its errors ('/spec/minReplicaCount: type {"type":"integer"}').
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const schemas = join(process.argv[2], "node_modules", "@kubernetes-models", "keda", "_schemas");
const prefix = "ComGithubKedacoreKedaV2ApisKedaV1alpha1";
const objects = JSON.parse(readFileSync(0, "utf8"));
const results = [];
for (const object of objects) {
  if (object.apiVersion !== "keda.sh/v1alpha1" || !/^[A-Za-z]+$/.test(object.kind ?? "")) {
    results.push([`not a keda.sh/v1alpha1 object: ${object.apiVersion} ${object.kind}`]);
    continue;
  }
  const { validate } = await import(pathToFileURL(join(schemas, `${prefix}${object.kind}.js`)).href);
  results.push(validate(object) ? [] : validate.errors.map((e) => `${e.instancePath || "/"}: ${e.message ?? e.keyword} ${JSON.stringify(e.params)}`));
}
process.stdout.write(JSON.stringify(results));
