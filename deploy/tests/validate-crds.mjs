// Validates the custom resources that kubernetes-validate skips (it knows core kinds only):
// ServiceMonitor and PrometheusRule (@kubernetes-models/prometheus-operator) and KEDA
// ScaledObject / TriggerAuthentication (@kubernetes-models/keda), pinned in package.json here.
//
//   node validate-crds.mjs FILE.json...      (one object per file; run by scripts/check-deploy.sh)
//
// Two checks per object:
//  1. the package's JSON-schema validation (types, required fields, patterns, enums);
//  2. unknown fields, which that schema allows but the API server silently prunes (a typo such
//     as `minReplicas` in a ScaledObject would vanish on apply). Field names come from the
//     TypeScript declarations (.d.ts) the packages ship, walked from the kind's interface.
import { readFileSync, existsSync } from "node:fs";
import { dirname, join, resolve } from "node:path";

import { ServiceMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor";
import { PrometheusRule } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PrometheusRule";
import { ScaledObject } from "@kubernetes-models/keda/keda.sh/v1alpha1/ScaledObject";
import { TriggerAuthentication } from "@kubernetes-models/keda/keda.sh/v1alpha1/TriggerAuthentication";

const MODELS = {
  "monitoring.coreos.com/v1/ServiceMonitor": [ServiceMonitor, "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor"],
  "monitoring.coreos.com/v1/PrometheusRule": [PrometheusRule, "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PrometheusRule"],
  "keda.sh/v1alpha1/ScaledObject": [ScaledObject, "@kubernetes-models/keda/keda.sh/v1alpha1/ScaledObject"],
  "keda.sh/v1alpha1/TriggerAuthentication": [TriggerAuthentication, "@kubernetes-models/keda/keda.sh/v1alpha1/TriggerAuthentication"],
};

// ES module imports ignore NODE_PATH: check-deploy.sh copies this file next to the
// node_modules it installed (npm ci --prefix) and runs it from there.
const nodeModules = join(dirname(new URL(import.meta.url).pathname), "node_modules");

// ---------------------------------------------------------------- .d.ts field catalogue
const fileCache = new Map();

function dtsPath(spec, fromFile) {
  if (spec.startsWith(".")) return resolve(dirname(fromFile), spec.replace(/\.js$/, ".d.ts"));
  const p = join(nodeModules, spec + ".d.ts");
  if (existsSync(p)) return p;
  throw new Error(`cannot resolve type module ${spec}`);
}

function parseFile(file) {
  if (fileCache.has(file)) return fileCache.get(file);
  const src = readFileSync(file, "utf8").replace(/\/\*[\s\S]*?\*\//g, "").replace(/^\s*\/\/.*$/gm, "");
  const imports = new Map(); // local name -> module spec
  for (const m of src.matchAll(/import\s*{([^}]*)}\s*from\s*"([^"]+)"/g)) {
    for (const part of m[1].split(",")) {
      const [orig, local] = part.trim().split(/\s+as\s+/);
      if (orig) imports.set((local || orig).trim(), m[2]);
    }
  }
  const aliases = new Map(); // exported alias -> local declaration name
  for (const m of src.matchAll(/export\s+type\s*{([^}]*)}/g)) {
    for (const part of m[1].split(",")) {
      const [orig, alias] = part.trim().split(/\s+as\s+/);
      if (orig && alias) aliases.set(alias.trim(), orig.trim());
    }
  }
  const typeAliases = new Map(); // `export type X = ...;`
  for (const m of src.matchAll(/export\s+type\s+(\w+)\s*=\s*([^;]+);/g)) typeAliases.set(m[1], m[2].trim());
  const interfaces = new Map(); // name -> body text
  const re = /export\s+interface\s+(\w+)[^{]*{/g;
  let m;
  while ((m = re.exec(src))) {
    let depth = 1, i = re.lastIndex;
    for (; i < src.length && depth > 0; i++) {
      if (src[i] === "{") depth++;
      else if (src[i] === "}") depth--;
    }
    interfaces.set(m[1], src.slice(re.lastIndex, i - 1));
  }
  const parsed = { file, imports, aliases, typeAliases, interfaces };
  fileCache.set(file, parsed);
  return parsed;
}

// Splits an object-type body into [name, typeText] at brace depth 0.
function members(body) {
  const out = [];
  let depth = 0, cur = "";
  for (const ch of body) {
    if (ch === "{" || ch === "<" || ch === "(") depth++;
    if (ch === "}" || ch === ">" || ch === ")") depth--;
    if (ch === ";" && depth === 0) { out.push(cur.trim()); cur = ""; continue; }
    cur += ch;
  }
  if (cur.trim()) out.push(cur.trim());
  return out.map((decl) => {
    const mm = decl.match(/^(?:"([^"]+)"|(\w+)|\[key:\s*string\])\??\s*:\s*([\s\S]*)$/);
    if (!mm) return null;
    return [mm[1] ?? mm[2] ?? "[key]", mm[3].trim()];
  }).filter(Boolean);
}

// A type: {kind:"object", props: Map} | {kind:"map", value} | {kind:"array", item} | {kind:"any"}
function typeOf(text, ctx, seen = new Set()) {
  text = text.trim();
  let m;
  if ((m = text.match(/^Array<([\s\S]*)>$/))) return { kind: "array", item: () => typeOf(m[1], ctx, seen) };
  if ((m = text.match(/^([\w]+)\[\]$/))) return { kind: "array", item: () => typeOf(m[1], ctx, seen) };
  if (text.startsWith("{") && text.endsWith("}")) return objectType(text.slice(1, -1), ctx, seen);
  if (/^\w+$/.test(text)) return named(text, ctx, seen);
  return { kind: "any" }; // primitives, literal unions, IntOrString, ...
}

function objectType(body, ctx, seen) {
  const mems = members(body);
  if (mems.length === 1 && mems[0][0] === "[key]") return { kind: "map", value: () => typeOf(mems[0][1], ctx, seen) };
  const props = new Map();
  for (const [name, t] of mems) props.set(name, () => typeOf(t, ctx, seen));
  return { kind: "object", props };
}

function named(name, ctx, seen) {
  if (["string", "number", "boolean", "any", "unknown", "object", "null"].includes(name)) return { kind: "any" };
  const key = ctx.file + "#" + name;
  if (seen.has(key)) return { kind: "any" }; // recursive types (e.g. JSONSchemaProps)
  const local = ctx.aliases.get(name) || name;
  if (ctx.interfaces.has(local)) return objectType(ctx.interfaces.get(local), ctx, new Set([...seen, key]));
  if (ctx.typeAliases.has(local)) return typeOf(ctx.typeAliases.get(local), ctx, new Set([...seen, key]));
  if (ctx.imports.has(name)) {
    const spec = ctx.imports.get(name);
    if (spec === "@kubernetes-models/base") return { kind: "any" };
    return named(name, parseFile(dtsPath(spec, ctx.file)), seen);
  }
  return { kind: "any" };
}

function unknownFields(value, type, path, out) {
  if (value === null || value === undefined) return;
  if (type.kind === "object" && typeof value === "object" && !Array.isArray(value)) {
    for (const [k, v] of Object.entries(value)) {
      const t = type.props.get(k);
      if (!t) out.push(`${path}/${k}: unknown field (known: ${[...type.props.keys()].join(", ")})`);
      else unknownFields(v, t(), `${path}/${k}`, out);
    }
  } else if (type.kind === "map" && typeof value === "object") {
    for (const [k, v] of Object.entries(value)) unknownFields(v, type.value(), `${path}/${k}`, out);
  } else if (type.kind === "array" && Array.isArray(value)) {
    value.forEach((v, i) => unknownFields(v, type.item(), `${path}/${i}`, out));
  }
}

function rootType(modulePath) {
  const file = join(nodeModules, modulePath + ".d.ts");
  const ctx = parseFile(file);
  const iface = [...ctx.interfaces.keys()][0]; // the kind's interface comes first
  return named(iface, ctx, new Set());
}

// ---------------------------------------------------------------- main
let failed = 0;
const files = process.argv.slice(2);
if (files.length === 0) {
  console.error("usage: node validate-crds.mjs FILE.json...");
  process.exit(2);
}
for (const f of files) {
  const doc = JSON.parse(readFileSync(f, "utf8"));
  const key = `${doc.apiVersion}/${doc.kind}`;
  const entry = MODELS[key];
  const name = `${doc.kind}/${doc.metadata?.name}`;
  if (!entry) {
    console.error(`FAIL ${name}: no model for ${key} (add it to validate-crds.mjs)`);
    failed++;
    continue;
  }
  const [Model, modulePath] = entry;
  const problems = [];
  try {
    new Model(doc).validate();
  } catch (e) {
    problems.push(...String(e.message).split(", "));
  }
  unknownFields(doc, rootType(modulePath), "", problems);
  if (problems.length) {
    failed++;
    for (const p of problems) console.error(`FAIL ${name}: ${p}`);
  }
}
console.log(`${files.length - failed}/${files.length} custom resources valid`);
process.exit(failed ? 1 : 0);
