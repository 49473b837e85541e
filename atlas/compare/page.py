"""The comparison page: atlases side by side (synchronised pan and zoom, shared hover), tables and figures.

The tables are written into the HTML here, so they read without JavaScript
and a test can check them; ``compare.js`` adds the viewers from
``compare.json``. OpenSeadragon is the copy vendored with the atlas viewer.
"""

from __future__ import annotations

from html import escape
from importlib import resources
from pathlib import Path
from typing import Any

from atlas.io import write_bytes
from atlas.viewer import asset_bytes

PAGE_ASSETS = ("compare.js", "compare.css")

METRIC_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("variant", "model", "{}"),
    ("test_accuracy", "test accuracy", "{:.3f}"),
    ("seconds_per_epoch", "s / epoch", "{:.1f}"),
    ("dead_fraction", "dead units", "{:.1%}"),
    ("inactive_fraction", "values ≤ 0", "{:.1%}"),
    ("hoyer_sparsity", "Hoyer sparsity", "{:.3f}"),
    ("activation_mean", "mean", "{:.3f}"),
    ("activation_std", "std", "{:.3f}"),
    ("trustworthiness", "trustworthiness", "{:.3f}"),
    ("class_purity", "class purity", "{:.3f}"),
    ("probe_accuracy", "linear probe", "{:.3f}"),
    ("icon_cosine", "icon cosine", "{:.3f}"),
    ("icon_top1", "icon top-1", "{:.2f}"),
    ("sae_variance_explained", "SAE variance explained", "{:.3f}"),
    ("sae_dead_fraction", "SAE dead features", "{:.1%}"),
    ("sae_mean_density", "SAE feature density", "{:.2%}"),
)


def _cell(value: Any, fmt: str) -> str:
    if value is None:
        return "–"
    try:
        return escape(fmt.format(value))
    except (ValueError, TypeError):
        return escape(str(value))


def metrics_table(rows: list[dict[str, Any]]) -> str:
    """Columns that no variant has a value for (the dictionary's, in an experiment without one) are left out."""
    columns = [column for column in METRIC_COLUMNS if any(row.get(column[0]) is not None for row in rows)]
    head = "".join(f"<th>{escape(title)}</th>" for _k, title, _f in columns)
    body = "".join("<tr>" + "".join(f"<td>{_cell(row.get(key), fmt)}</td>" for key, _t, fmt in columns) + "</tr>" for row in rows)
    return f'<table id="metrics" class="numbers"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def claims_table(claims: list[dict[str, Any]]) -> str:
    verdict = {True: ("held", "held"), False: ("did not hold", "failed"), None: ("not tested", "untested")}
    body = "".join(
        f"<tr><td>{escape(c['claim'])}</td><td>{escape(c['measured'])}</td><td>{escape(c['rule'])}</td>"
        f'<td class="{verdict[c["held"]][1]}">{verdict[c["held"]][0]}</td></tr>'
        for c in claims
    )
    return (
        '<table id="claims"><thead><tr><th>claim</th><th>measured on this dataset</th><th>rule</th><th>verdict</th></tr></thead>'
        f"<tbody>{body}</tbody></table>"
    )


def _layer_text(layer: str | dict[str, str]) -> str:
    return layer if isinstance(layer, str) else ", ".join(f"{name}: {name_of}" for name, name_of in layer.items())


def cka_html(table: dict[str, dict[str, float]], ident: str) -> str:
    """A CKA matrix as a table, each cell shaded by its value (0 white, 1 dark)."""
    names = list(table)
    head = "".join(f"<th>{escape(n)}</th>" for n in names)
    body = "".join(
        f"<tr><th>{escape(a)}</th>"
        + "".join(f'<td style="background: rgba(40, 80, 160, {0.75 * table[a][b]:.2f})">{table[a][b]:.2f}</td>' for b in names)
        + "</tr>"
        for a in names
    )
    return f'<table id="{escape(ident)}" class="numbers cka"><thead><tr><th></th>{head}</tr></thead><tbody>{body}</tbody></table>'


def depth_html(depth: dict[str, Any] | None) -> str:
    """Each model's CKA across its layers with their probes, and CKA across models at each matched depth."""
    if not depth:
        return ""
    parts = []
    for name, d in depth["models"].items():
        probes = ", ".join(f"{escape(layer)} {p['accuracy']:.3f}" if p else f"{escape(layer)} –" for layer, p in d["probes"].items())
        parts.append(f"<h3>{escape(name)} across depth</h3>{cka_html(d['cka'], 'depth-' + name)}<p>linear probe: {probes}</p>")
    for m in depth.get("matched", []):
        at = ", ".join(f"{escape(n)} {escape(layer)}" for n, layer in m["layers"].items())
        parts.append(f"<h3>depth {m['depth'] + 1}: {at}</h3>{cka_html(m['cka'], 'matched-' + str(m['depth']))}")
    return "".join(parts)


def _how_laid_out(method: str) -> str:
    return "laid out independently (compare.align: none)" if method == "none" else f"aligned with {escape(method)}"


def write_page(root: Path, result: dict[str, Any]) -> Path:
    """``index.html`` plus ``viewer/compare.{js,css}`` and OpenSeadragon at the experiment root."""
    for name in PAGE_ASSETS:
        write_bytes(root / "viewer" / name, resources.files(__package__).joinpath("assets", name).read_bytes())
    for name in ("openseadragon.min.js", "openseadragon-LICENSE.txt"):
        write_bytes(root / "viewer" / name, asset_bytes(name))
    titles = {
        "functions": "each activation and its derivative",
        "training": "training curves",
        "gradients": "gradient norm by depth, first epoch",
        "histograms": f"values of {_layer_text(result['layer'])} on the test images",
        "cka": "linear CKA between the compared layers, on the same rows",
        "cka_depth": "linear CKA between each model's layers, across depth",
        "dictionaries": "each variant's sparse dictionary of the layer (same width and k)",
    }
    figures = "".join(
        f'<figure><img src="{escape(path)}" alt="{escape(titles.get(key, key))}" loading="lazy">'
        f"<figcaption>{escape(titles.get(key, key))}</figcaption></figure>"
        for key, path in result["figures"].items()
    )
    groups = "".join(
        f'<section class="group" data-group="{k}"><h2>{escape(g["title"])}</h2>'
        f'<p class="alignment">{_how_laid_out(g["alignment"]["method"])}: the same image moves '
        f"{g['alignment']['mean_shift']:.3f} of the atlas width between neighbouring panels; "
        f"{g['alignment']['neighbour_agreement_k10']:.0%} of its 10 nearest neighbours stay neighbours.</p>"
        f'<div class="panels"></div></section>'
        for k, g in enumerate(result["groups"])
    )
    title = result.get("title") or f"{result['name']}: {result['architecture']} on {result['dataset']}, layer {result['layer']}"
    similarity = "".join(
        f"<h3>{escape(g['title'])}</h3>{cka_html(g['cka'], 'cka-' + str(k))}" for k, g in enumerate(result["groups"]) if g.get("cka")
    )
    depth = depth_html(result.get("depth"))
    claims = f"<section><h2>Claims, tested</h2>{claims_table(result['claims'])}</section>" if result["claims"] else ""
    html = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(title)}</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="viewer/compare.css">
</head>
<body>
<header><h1>{escape(title)}</h1>
<p>Hover a cell to see the same region in every atlas; drag or scroll in any panel to pan and zoom them all.
<label>grid <select id="grid-select" aria-label="Grid"></select></label></p></header>
<main>
{groups}
<section><h2>Measurements</h2>{metrics_table(result["metrics"])}</section>
<section id="similarity"><h2>Representational similarity (linear CKA)</h2>{similarity}{depth}</section>
{claims}
<section class="figures"><h2>Figures</h2>{figures}</section>
</main>
<script src="viewer/openseadragon.min.js"></script>
<script src="viewer/compare.js"></script>
</body>
</html>
"""
    path = root / "index.html"
    write_bytes(path, html.encode())
    return path
