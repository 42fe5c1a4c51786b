"""The service's ``/docs`` page: the OpenAPI schema rendered as one self-contained HTML page
(no script, no CDN: it works on an offline kiosk)."""
from __future__ import annotations

import html
import json
import re

_DOCS_CSS = """
body{font:15px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;max-width:60rem;
padding:1rem 1.5rem 4rem;color:#1b1f24}h1{margin-bottom:.2rem}h2{border-bottom:1px solid #d0d7de;
padding-bottom:.2rem;margin-top:2rem}code,pre{font:13px/1.4 ui-monospace,Menlo,Consolas,monospace}
pre{background:#f6f8fa;padding:.6rem .8rem;overflow-x:auto;border-radius:6px}
.op{border:1px solid #d0d7de;border-radius:6px;margin:1rem 0;padding:.2rem 1rem .6rem}
.op h3{margin:.6rem 0 .3rem;font-size:1.05rem}.m{display:inline-block;min-width:4.2rem;text-align:center;
border-radius:4px;color:#fff;font-size:.8rem;padding:.1rem .3rem;margin-right:.5rem;font-weight:600}
.GET{background:#0969da}.POST{background:#1a7f37}.DELETE{background:#cf222e}.PUT,.PATCH{background:#9a6700}
table{border-collapse:collapse;margin:.3rem 0}td,th{border:1px solid #d0d7de;padding:.2rem .5rem;
text-align:left;vertical-align:top}th{background:#f6f8fa}.muted{color:#57606a}
"""


def _schema_html(schema: dict | None) -> str:
    """A short human form of a JSON schema as HTML: ``integer (min 1, max 5, default 3)``,
    a link to a named schema, ``array of ...``."""
    if not schema:
        return ""
    if "$ref" in schema:
        name = html.escape(schema["$ref"].rsplit("/", 1)[-1])
        return f"<a href='#schema-{name}'>{name}</a>"
    if "anyOf" in schema:
        return " or ".join(_schema_html(s) for s in schema["anyOf"])
    kind = schema.get("type", "object")
    if kind == "array":
        return f"array of {_schema_html(schema.get('items')) or 'items'}"
    if schema.get("format") == "binary":
        return "binary file"
    notes = [f"{k.replace('imum', '').replace('Length', ' length')} {schema[k]}"
             for k in ("minimum", "maximum", "minLength", "maxLength") if k in schema]
    notes += [f"default {json.dumps(schema['default'])}"] if "default" in schema else []
    return html.escape(kind + (f" ({', '.join(notes)})" if notes else ""))


def _prose(text: str) -> str:
    """A docstring as HTML: escaped, ``literals`` as code."""
    return re.sub(r"``(.+?)``", r"<code>\1</code>", html.escape(" ".join(text.split())))


def docs_html(spec: dict, *, token_required: bool = False) -> str:
    """The API reference as one self-contained HTML page (no script, no external resource)
    rendered from the OpenAPI schema ``spec``: every operation with its parameters, request
    body types and responses, the schemas, and the raw schema."""
    e = html.escape
    info = spec.get("info", {})
    out = ["<!doctype html><html lang=en><head><meta charset=utf-8>",
           "<meta name=viewport content='width=device-width,initial-scale=1'>",
           f"<title>{e(info.get('title', 'API'))} {e(str(info.get('version', '')))} API</title>",
           f"<style>{_DOCS_CSS}</style></head><body>",
           f"<h1>{e(info.get('title', 'API'))} <span class=muted>{e(str(info.get('version', '')))}</span></h1>",
           f"<p>{e(info.get('description', ''))}</p>",
           "<p>Machine-readable schema: <a href='openapi.json'><code>/openapi.json</code></a>. "
           "Errors are JSON <code>{\"error\": {\"code\", \"message\", \"status\"}}</code> with stable codes.</p>",
           "<p>" + ("This service requires <code>Authorization: Bearer TOKEN</code> on <code>/v1/*</code>."
                    if token_required else "This service runs without authentication.") + "</p>",
           "<h2>Example</h2><pre>curl -X POST --data-binary @photo.jpg -H 'Content-Type: image/jpeg' "
           + ("-H 'Authorization: Bearer TOKEN' " if token_required else "")
           + "'http://HOST:PORT/v1/classify?top_k=3'</pre>"]
    by_tag: dict[str, list] = {}
    for path, ops in spec.get("paths", {}).items():
        for method, op in ops.items():
            by_tag.setdefault((op.get("tags") or ["other"])[0], []).append((path, method.upper(), op))
    for tag, ops in by_tag.items():
        out.append(f"<h2>{e(tag)}</h2>")
        for path, method, op in ops:
            out.append(f"<div class=op id='{e(method.lower() + path)}'>"
                       f"<h3><span class='m {e(method)}'>{e(method)}</span>"
                       f"<code>{e(path)}</code> <span class=muted>{e(op.get('summary', ''))}</span></h3>")
            if op.get("description"):
                out.append(f"<p>{_prose(op['description'])}</p>")
            params = op.get("parameters") or []
            if params:
                out.append("<table><tr><th>parameter</th><th>in</th><th>type</th><th>required</th></tr>")
                out += [f"<tr><td><code>{e(p['name'])}</code></td><td>{e(p.get('in', ''))}</td>"
                        f"<td>{_schema_html(p.get('schema'))}</td><td>{'yes' if p.get('required') else 'no'}</td></tr>"
                        for p in params]
                out.append("</table>")
            body = (op.get("requestBody") or {}).get("content") or {}
            if body:
                out.append("<p>Request body: " + ", ".join(f"<code>{e(ct)}</code>" for ct in body) + "</p>")
            responses = op.get("responses") or {}
            if responses:
                out.append("<table><tr><th>status</th><th>response</th><th>body</th></tr>")
                for status, r in responses.items():
                    schema = next(iter((r.get("content") or {}).values()), {}).get("schema")
                    out.append(f"<tr><td>{e(str(status))}</td><td>{e(r.get('description', ''))}</td>"
                               f"<td>{_schema_html(schema)}</td></tr>")
                out.append("</table>")
            out.append("</div>")
    schemas = (spec.get("components") or {}).get("schemas") or {}
    if schemas:
        out.append("<h2>Schemas</h2>")
        for name, schema in schemas.items():
            out.append(f"<h3 id='schema-{e(name)}'><code>{e(name)}</code></h3>")
            props = schema.get("properties") or {}
            required = set(schema.get("required") or ())
            if props:
                out.append("<table><tr><th>field</th><th>type</th><th>required</th></tr>")
                out += [f"<tr><td><code>{e(k)}</code></td><td>{_schema_html(v)}</td>"
                        f"<td>{'yes' if k in required else 'no'}</td></tr>" for k, v in props.items()]
                out.append("</table>")
    out.append("<h2>Raw schema</h2><details><summary>openapi.json</summary><pre>"
               + e(json.dumps(spec, indent=2)) + "</pre></details></body></html>")
    return "\n".join(out)
