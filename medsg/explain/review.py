"""``review.html``: one static, self-contained page on which clinicians rate explanation overlays.

Clinicians open the file from disk, often on a hospital workstation without a Python environment and
sometimes without internet, so the page needs no server and loads nothing: images are ``data:`` URIs, CSS
and JS are inline, and a Content-Security-Policy forbids every network request (no fetch, no forms, no
remote images). Ratings stay in the browser (memory, plus ``localStorage`` so that a closed tab loses
nothing) until the reviewer downloads them as ``ratings.csv``.

Case ids are file names and therefore user-controlled: every text is HTML-escaped where it meets HTML, and
the data handed to the script is JSON inside ``<script type="application/json">`` with ``<``, ``>`` and ``&``
escaped, so a hostile name shows up as text and never as markup. The CSV the page writes guards against
spreadsheet formula injection.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medsg.core.io import atomic_write_text

__all__ = ["ReviewCase", "render_review_page", "write_review_page"]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
RATINGS = ("plausible", "partly", "implausible")


@dataclass(frozen=True)
class ReviewCase:
    """One explained image: what the model said about it and the heatmaps that claim to show why."""

    case_id: str  # the image id (a file name stem, user-controlled: may contain hostile text)
    fold: int | None  # outer fold whose model explained it (None for an ensemble / predict)
    true_class: str | None  # None when unlabelled (predict on new images)
    predicted_class: str
    probability: float  # probability of the predicted class
    image_png: bytes  # the original image (RGB PNG)
    # map type name -> colour-mapped PNG heatmap (RGBA, transparent where the map is low), same size as the image
    heatmaps: dict[str, bytes]
    note: str = ""  # free text shown on the card (e.g. "ensemble mean of 5 folds")
    outline_png: bytes | None = None  # the lesion outline on a transparent layer, drawn above every heatmap
    calibrated: bool = False  # whether ``probability`` is temperature-scaled (the card says which)


# ----------------------------------------------------------------------------------------------- checks


def _png_size(data: bytes, what: str) -> tuple[int, int]:
    """(width, height) from the PNG header; a clear error beats a broken image on a clinician's screen."""
    if len(data) < 24 or data[:8] != PNG_SIGNATURE or data[12:16] != b"IHDR":
        raise ValueError(f"{what} is not a PNG image")
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def _check_case(case: ReviewCase, classes: set[str]) -> None:
    """Refuse a case the page would show wrongly (unknown class, impossible probability, mismatched maps)."""
    label = f"case {case.case_id!r} (fold {case.fold})"
    for name, value in (("true class", case.true_class), ("predicted class", case.predicted_class)):
        if value is not None and value not in classes:
            raise ValueError(f"{label}: {name} {value!r} is not one of the class names {sorted(classes)}")
    if case.outline_png is not None and _png_size(case.outline_png, f"{label}: outline") != _png_size(
        case.image_png, f"{label}: image"
    ):
        raise ValueError(f"{label}: the lesion outline is not the size of the image")
    if not (math.isfinite(case.probability) and 0.0 <= case.probability <= 1.0):
        raise ValueError(f"{label}: probability {case.probability!r} is not in [0, 1]")
    size = _png_size(case.image_png, f"{label}: image_png")
    for map_type, png in case.heatmaps.items():
        if _png_size(png, f"{label}: heatmap {map_type!r}") != size:
            raise ValueError(f"{label}: heatmap {map_type!r} is not the size of the image {size}")


def _check_inputs(cases: Sequence[ReviewCase], class_names: Sequence[str]) -> None:
    """Validate everything up front, so that a page is either right or not written at all."""
    if not class_names or len(set(class_names)) != len(class_names):
        raise ValueError(f"class_names must be non-empty and unique, got {list(class_names)}")
    if not cases:
        raise ValueError("no cases to review")
    seen: set[tuple[str, int | None]] = set()
    for case in cases:
        _check_case(case, set(class_names))
        key = (case.case_id, case.fold)
        if key in seen:  # ratings are keyed by (case, fold, map): duplicates would be indistinguishable
            raise ValueError(f"case {case.case_id!r} appears twice for fold {case.fold}")
        seen.add(key)
    if not map_types(cases):
        raise ValueError("no case has a heatmap: there is nothing to review")


def map_types(cases: Sequence[ReviewCase]) -> list[str]:
    """All map type names in order of first appearance, so the toggle follows the caller's order."""
    return list(dict.fromkeys(name for case in cases for name in case.heatmaps))


# ------------------------------------------------------------------------------------------- encoding


def _esc(text: object) -> str:
    """HTML-escape for text and attribute contexts alike (quotes included)."""
    return html.escape(str(text), quote=True)


def _data_uri(png: bytes) -> str:
    """A ``data:`` URI: the page embeds its images so that it opens offline and leaks nothing."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _script_json(obj: Any) -> str:
    """JSON safe inside a ``<script>`` element: no ``</script>``, no ``<!--``, no entity surprises."""
    text = json.dumps(obj, ensure_ascii=True, allow_nan=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _csp_hash(source: str) -> str:
    """CSP source expression for one inline element, so only this page's own script and style may run."""
    digest = hashlib.sha256(source.encode("utf-8")).digest()
    return "'sha256-" + base64.b64encode(digest).decode("ascii") + "'"


def _csp(script: str, style: str) -> str:
    """A policy that allows the page's own inline code and data images, and no network at all."""
    return (
        f"default-src 'none'; script-src {_csp_hash(script)}; style-src {_csp_hash(style)}; "
        "img-src data:; connect-src 'none'; form-action 'none'; base-uri 'none'; frame-src 'none'"
    )


def _storage_key(cases: Sequence[ReviewCase], title: str, maps: Sequence[str]) -> str:
    """Where the browser keeps this page's ratings: a hash of what the reviewer rates (the cases, and what each
    shows: prediction, probability, overlays). A page remade from a retrained run under the same title gets a new
    key, so ratings given to the old maps never appear beside new ones."""
    digest = hashlib.sha256(json.dumps([title, list(maps)]).encode("utf-8"))
    for c in cases:
        digest.update(json.dumps([c.case_id, c.fold, c.predicted_class, c.probability]).encode("utf-8"))
        for name in maps:
            digest.update(hashlib.sha256(c.heatmaps.get(name, b"")).digest())
    return "medsg-review:" + digest.hexdigest()[:24]


def _page_data(
    cases: Sequence[ReviewCase],
    class_names: Sequence[str],
    title: str,
    maps: Sequence[str],
    descriptions: Mapping[str, str],
) -> dict[str, Any]:
    """What the script needs, as plain data: classes as indices, overlays as data URIs per map type."""
    index = {name: i for i, name in enumerate(class_names)}
    return {
        "storageKey": _storage_key(cases, title, maps),
        "classes": list(class_names),
        "maps": [{"name": m, "description": descriptions.get(m, "")} for m in maps],
        "ratings": list(RATINGS),
        "cases": [
            {
                "id": c.case_id,
                "fold": c.fold,
                "true": None if c.true_class is None else index[c.true_class],
                "pred": index[c.predicted_class],
                "prob": float(c.probability),
                "overlays": [_data_uri(c.heatmaps[m]) if m in c.heatmaps else None for m in maps],
            }
            for c in cases
        ],
    }


# ------------------------------------------------------------------------------------------------ HTML


def _options(class_names: Sequence[str], first: Sequence[tuple[str, str]]) -> str:
    """``<option>`` list: fixed choices first, then one per class (value = class index)."""
    fixed = [f'<option value="{_esc(v)}">{_esc(t)}</option>' for v, t in first]
    per_class = [f'<option value="{i}">{_esc(name)}</option>' for i, name in enumerate(class_names)]
    return "".join(fixed + per_class)


def _filters_html(class_names: Sequence[str], critical_class: str | None = None) -> str:
    """Filter controls: outcome for a chosen class (the critical class first, where there is one), true and
    predicted class, confidence range."""
    outcomes = [("any", "any")] + [(o, o) for o in ("TP", "FP", "FN", "TN")]
    outcome_options = "".join(f'<option value="{v}">{t}</option>' for v, t in outcomes)
    outcome_classes = _options(class_names, [])
    if critical_class in class_names:
        chosen = f'<option value="{list(class_names).index(critical_class)}">'
        outcome_classes = outcome_classes.replace(chosen, chosen[:-1] + " selected>", 1)
    return (
        '<fieldset class="filters"><legend>Filter cases</legend>'
        '<label>Outcome <select id="f-outcome">' + outcome_options + "</select></label>"
        '<label>for class <select id="f-outcome-class">' + outcome_classes + "</select></label>"
        '<label>True class <select id="f-true">'
        + _options(class_names, [("any", "any"), ("none", "unlabelled")])
        + "</select></label>"
        '<label>Predicted class <select id="f-pred">'
        + _options(class_names, [("any", "any")])
        + "</select></label>"
        '<label>Confidence from <input id="f-min" type="number" min="0" max="100" step="1" value="0"'
        ' inputmode="decimal"> %</label>'
        '<label>to <input id="f-max" type="number" min="0" max="100" step="1" value="100"'
        ' inputmode="decimal"> %</label>'
        '<p class="hint">Outcome is relative to the chosen class: TP true and predicted, FN true but not '
        "predicted, FP predicted but not true, TN neither. Unlabelled cases have no outcome.</p>"
        "</fieldset>"
    )


def _maps_html(maps: Sequence[str], colorbar_png: bytes | None) -> str:
    """Map type toggle, opacity slider, the selected map's description and the colour bar."""
    radios = "".join(
        f'<label><input type="radio" name="map" value="{i}"{" checked" if i == 0 else ""}> {_esc(m)}</label>'
        for i, m in enumerate(maps)
    )
    colorbar = ""
    if colorbar_png is not None:
        _png_size(colorbar_png, "colorbar_png")
        colorbar = (
            '<figure class="colorbar">'
            f'<img src="{_data_uri(colorbar_png)}" alt="Colour scale of the heatmaps: transparent at the low end, '
            'then dark to bright toward the high end">'
            "<figcaption>Heatmap colours, low (transparent: the image shows through) to high. The red line is "
            "the lesion outline, drawn above the heatmap.</figcaption></figure>"
        )
    return (
        '<fieldset class="maps"><legend>Heatmap</legend>'
        f'<div class="map-choice" role="radiogroup" aria-label="Map type">{radios}</div>'
        '<label>Opacity <input id="opacity" type="range" min="0" max="100" step="5" value="50">'
        ' <output id="opacity-value" for="opacity">50 %</output></label>'
        f'<p id="map-description" class="description" aria-live="polite"></p>{colorbar}'
        "</fieldset>"
    )


def _actions_html() -> str:
    """Count of shown cases and the ratings buttons."""
    return (
        '<div class="actions">'
        '<p id="count" class="count" role="status" aria-live="polite"></p>'
        '<p id="rated" class="rated"></p>'
        '<button type="button" id="download">Download ratings (CSV)</button>'
        '<button type="button" id="clear">Clear all ratings</button>'
        "</div>"
    )


def _fact(term: str, value: str, css: str = "") -> str:
    """One ``<dt>/<dd>`` pair; ``value`` is already escaped."""
    cls = f' class="{css}"' if css else ""
    return f"<dt>{term}</dt><dd{cls}>{value}</dd>"


def _verdict(case: ReviewCase) -> tuple[str, str]:
    """(css class, text) saying whether the prediction was right, without needing colour to tell."""
    if case.true_class is None:
        return "unlabelled", "unlabelled"
    if case.true_class == case.predicted_class:
        return "correct", "correct"
    return "wrong", "misclassified"


def _rating_html(index: int) -> str:
    """Rating radios and note for the overlay currently shown on card ``index``."""
    radios = "".join(
        f'<label><input type="radio" name="rating-{index}" value="{r}"> {r}</label>' for r in RATINGS
    )
    return (
        '<fieldset class="rating"><legend>Rating of the <span class="map-name"></span> overlay</legend>'
        f'<div class="rating-choice">{radios}</div>'
        '<label class="note-label">Note <textarea class="rating-note" rows="2"></textarea></label>'
        "</fieldset>"
    )


def _card_html(index: int, case: ReviewCase) -> str:
    """A card: image with heatmap layer on top, the facts, and the rating of the shown overlay."""
    case_id = _esc(case.case_id)
    verdict_css, verdict = _verdict(case)
    fold = "ensemble / none" if case.fold is None else _esc(case.fold)
    true_class = "unlabelled" if case.true_class is None else _esc(case.true_class)
    kind = "calibrated" if case.calibrated else "uncalibrated"
    facts = (
        _fact("Fold", fold)
        + _fact("True class", true_class)
        + _fact("Predicted", _esc(case.predicted_class))
        + _fact(f"P({_esc(case.predicted_class)}), {kind}", f"{case.probability:.1%}")
        + _fact("Result", verdict, f"verdict {verdict_css}")
    )
    note = f'<p class="case-note">{_esc(case.note)}</p>' if case.note else ""
    return (
        f'<article class="card" data-index="{index}" aria-label="Case {case_id}">'
        f'<h2 class="case-id">{case_id}</h2>'
        '<div class="stack">'
        f'<img class="original" src="{_data_uri(case.image_png)}" alt="Original image of case {case_id}">'
        '<img class="overlay" alt="" hidden>'
        + (
            f'<img class="outline" src="{_data_uri(case.outline_png)}" alt="Lesion outline of case {case_id}">'
            if case.outline_png is not None
            else ""
        )
        + "</div>"
        '<p class="missing" hidden>No <span class="map-name"></span> map for this case.</p>'
        f"<dl>{facts}</dl>{note}{_rating_html(index)}"
        "</article>"
    )


def render_review_page(
    cases: Sequence[ReviewCase],
    class_names: Sequence[str],
    title: str,
    map_descriptions: Mapping[str, str] | None = None,
    colorbar_png: bytes | None = None,
    critical_class: str | None = None,
) -> str:
    """The review page as HTML text (see the module docstring for what it does and why it is built so).

    ``map_descriptions`` may name map types that no case has (they are ignored). Raises ``ValueError`` for
    inputs the page would show wrongly: unknown classes, probabilities outside [0, 1], non-PNG images,
    heatmaps of another size than their image, duplicate (case_id, fold) pairs, no cases or no heatmaps.
    """
    _check_inputs(cases, class_names)
    maps = map_types(cases)
    data = _page_data(cases, class_names, title, maps, dict(map_descriptions or {}))
    cards = "".join(_card_html(i, case) for i, case in enumerate(cases))
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{_esc(_csp(_SCRIPT, _STYLE))}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="referrer" content="no-referrer">'
        f"<title>{_esc(title)}</title><style>{_STYLE}</style></head><body>"
        f'<header><h1>{_esc(title)}</h1><p class="privacy">This page works offline and sends nothing '
        "anywhere. Ratings stay in this browser until you download them.</p>"
        '<noscript><p class="warning">Filters, heatmaps and ratings need JavaScript, which is turned off.'
        "</p></noscript></header>"
        f'<section class="controls" aria-label="Controls">{_filters_html(class_names, critical_class)}'
        f"{_maps_html(maps, colorbar_png)}{_actions_html()}</section>"
        f'<main><p id="empty" class="empty" hidden>No case matches the filters.</p>'
        f'<div class="cards">{cards}</div></main>'
        f'<script type="application/json" id="review-data">{_script_json(data)}</script>'
        f"<script>{_SCRIPT}</script></body></html>\n"
    )


def write_review_page(
    path: Path,
    cases: Sequence[ReviewCase],
    class_names: Sequence[str],
    title: str,
    map_descriptions: Mapping[str, str] | None = None,
    colorbar_png: bytes | None = None,
    critical_class: str | None = None,
) -> Path:
    """Render the review page and write it atomically, so a reviewer never opens half a page."""
    text = render_review_page(cases, class_names, title, map_descriptions, colorbar_png, critical_class)
    return atomic_write_text(path, text)


# ------------------------------------------------------------------------------------------ CSS and JS

_STYLE = """
:root { --overlay-opacity: 0.5; --fg: #1b1b1b; --muted: #555; --line: #c8c8c8; --accent: #0b5cad; }
* { box-sizing: border-box; }
body { margin: 0; padding: 1rem 1.25rem 2rem; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif;
  color: var(--fg); background: #fafafa; }
h1 { font-size: 1.4rem; margin: 0 0 .25rem; overflow-wrap: anywhere; }
.privacy, .hint, .description { color: var(--muted); font-size: .9rem; margin: .25rem 0; }
.warning { color: #8a1c1c; font-weight: 600; }
.controls { display: flex; flex-wrap: wrap; gap: .75rem; margin: .75rem 0 1rem; }
fieldset { border: 1px solid var(--line); border-radius: 6px; padding: .5rem .75rem; margin: 0; background: #fff; }
legend { font-weight: 600; padding: 0 .25rem; }
.filters, .maps { flex: 1 1 22rem; }
.filters label, .maps > label { display: inline-block; margin: .2rem .75rem .2rem 0; }
.map-choice label, .rating-choice label { display: inline-block; margin-right: .75rem; }
input[type=number] { width: 4.5em; }
select, input, textarea, button { font: inherit; }
button { padding: .35rem .8rem; border: 1px solid var(--accent); border-radius: 4px; background: #fff;
  color: var(--accent); cursor: pointer; margin: .2rem .5rem .2rem 0; }
button#download { background: var(--accent); color: #fff; }
:focus-visible { outline: 3px solid #f0a400; outline-offset: 2px; }
.actions { flex: 1 1 14rem; }
.count { font-weight: 600; margin: .25rem 0; }
.rated { color: var(--muted); margin: .25rem 0; }
.colorbar { display: flex; align-items: center; gap: .5rem; font-size: .85rem; }
.colorbar { margin: .25rem 0 0; }
.colorbar img { display: block; width: 22rem; max-width: 100%; height: auto; }
.colorbar figcaption { font-size: .85rem; color: var(--muted); max-width: 26rem; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(17rem, 1fr)); gap: 1rem; }
.card { background: #fff; border: 1px solid var(--line); border-radius: 6px; padding: .75rem; }
.card[hidden], [hidden] { display: none !important; }
.case-id { font-size: 1rem; margin: 0 0 .5rem; overflow-wrap: anywhere; }
.stack { position: relative; width: 100%; background: #000; }
.stack img { display: block; width: 100%; height: auto; }
.stack .overlay { position: absolute; inset: 0; height: 100%; opacity: var(--overlay-opacity); }
.stack .outline { position: absolute; inset: 0; height: 100%; pointer-events: none; }
.missing { color: #8a1c1c; font-size: .9rem; }
dl { display: grid; grid-template-columns: auto 1fr; gap: .1rem .75rem; margin: .5rem 0; font-size: .9rem; }
dt { color: var(--muted); }
dd { margin: 0; overflow-wrap: anywhere; }
.verdict.correct { color: #1d6b2f; }
.verdict.wrong { color: #8a1c1c; font-weight: 600; }
.case-note { font-size: .9rem; font-style: italic; margin: .25rem 0 .5rem; overflow-wrap: anywhere; }
.rating { margin-top: .5rem; }
.note-label { display: block; margin-top: .25rem; }
.rating-note { display: block; width: 100%; resize: vertical; }
.empty { font-weight: 600; }
@media print {
  body { background: #fff; padding: 0; font-size: 11pt; }
  button, .privacy, .hint, .filters { display: none !important; }
  .cards { grid-template-columns: repeat(2, 1fr); }
  .card { break-inside: avoid; border-color: #999; }
  .stack, .stack img, .colorbar img { -webkit-print-color-adjust: exact; print-color-adjust: exact; }
}
"""

_SCRIPT = """
"use strict";
(() => {
  const data = JSON.parse(document.getElementById("review-data").textContent);
  const cards = Array.from(document.querySelectorAll(".card"));
  const byId = (id) => document.getElementById(id);
  let currentMap = 0;

  // Ratings per (case id, fold, map type); kept in memory and, where allowed, in localStorage.
  const ratings = loadRatings();

  function ratingKey(caseIndex, mapIndex) {
    const c = data.cases[caseIndex];
    return JSON.stringify([c.id, c.fold, data.maps[mapIndex].name]);
  }

  function loadRatings() {
    const out = new Map();
    try {
      const saved = JSON.parse(window.localStorage.getItem(data.storageKey) || "{}");
      for (const [k, v] of Object.entries(saved)) {
        if (v && typeof v.note === "string" && (v.rating === "" || data.ratings.includes(v.rating))) {
          out.set(k, { rating: v.rating, note: v.note });
        }
      }
    } catch (err) { /* storage unavailable or corrupt: start empty */ }
    return out;
  }

  function showRatedCount() {
    byId("rated").textContent = `${ratings.size} rating(s) entered`;
  }

  function saveRatings() {
    try {
      window.localStorage.setItem(data.storageKey, JSON.stringify(Object.fromEntries(ratings)));
    } catch (err) { /* memory only */ }
    showRatedCount();
  }

  function outcome(c, cls) {
    if (c.true === null) return null;
    const t = c.true === cls, p = c.pred === cls;
    return t && p ? "TP" : t ? "FN" : p ? "FP" : "TN";
  }

  function percent(id, fallback) {
    const v = parseFloat(byId(id).value);
    return Number.isFinite(v) ? v : fallback;
  }

  function readFilters() {
    return {
      outcome: byId("f-outcome").value,
      outcomeClass: Number(byId("f-outcome-class").value),
      trueClass: byId("f-true").value,
      predClass: byId("f-pred").value,
      min: percent("f-min", 0) - 1e-9,
      max: percent("f-max", 100) + 1e-9,
    };
  }

  function matches(c, f) {
    if (f.outcome !== "any" && outcome(c, f.outcomeClass) !== f.outcome) return false;
    if (f.trueClass === "none" && c.true !== null) return false;
    if (!["any", "none"].includes(f.trueClass) && c.true !== Number(f.trueClass)) return false;
    if (f.predClass !== "any" && c.pred !== Number(f.predClass)) return false;
    const pct = c.prob * 100;
    return pct >= f.min && pct <= f.max;
  }

  function applyFilters() {
    const f = readFilters();
    let shown = 0;
    for (const card of cards) {
      const ok = matches(data.cases[Number(card.dataset.index)], f);
      card.hidden = !ok;
      if (ok) shown += 1;
    }
    byId("count").textContent = `${shown} of ${data.cases.length} cases shown`;
    byId("empty").hidden = shown > 0;
  }

  function showRating(card, caseIndex) {
    const saved = ratings.get(ratingKey(caseIndex, currentMap)) || { rating: "", note: "" };
    for (const radio of card.querySelectorAll(".rating input[type=radio]")) {
      radio.checked = radio.value === saved.rating;
    }
    card.querySelector(".rating-note").value = saved.note;
  }

  function showMap(mapIndex) {
    currentMap = mapIndex;
    const map = data.maps[mapIndex];
    byId("map-description").textContent = map.description;
    for (const el of document.querySelectorAll(".map-name")) el.textContent = map.name;
    for (const card of cards) {
      const i = Number(card.dataset.index);
      const uri = data.cases[i].overlays[mapIndex];
      const overlay = card.querySelector(".overlay");
      if (uri) {
        overlay.src = uri;
        overlay.alt = `${map.name} heatmap of case ${data.cases[i].id}`;
      } else {
        overlay.removeAttribute("src");
        overlay.alt = "";
      }
      overlay.hidden = !uri;
      card.querySelector(".missing").hidden = Boolean(uri);
      card.querySelector(".rating").disabled = !uri;
      showRating(card, i);
    }
  }

  function storeRating(card) {
    const i = Number(card.dataset.index);
    const checked = card.querySelector(".rating input[type=radio]:checked");
    const entry = { rating: checked ? checked.value : "", note: card.querySelector(".rating-note").value };
    const key = ratingKey(i, currentMap);
    if (entry.rating || entry.note) ratings.set(key, entry);
    else ratings.delete(key);
    saveRatings();
  }

  // Spreadsheets run cells that start with = + - @ (or tab / CR) as formulas: prefix a quote.
  function csvCell(value) {
    let s = value === null || value === undefined ? "" : String(value);
    if (/^[=+\\-@\\t\\r]/.test(s)) s = "'" + s;
    if (/[",\\r\\n]/.test(s)) s = '"' + s.replace(/"/g, '""') + '"';
    return s;
  }

  function ratingsCsv() {
    const rows = [["case_id", "fold", "true_class", "predicted_class", "map_type", "rating", "note"]];
    data.cases.forEach((c, i) => {
      data.maps.forEach((m, j) => {
        const r = ratings.get(ratingKey(i, j));
        if (!r) return;
        const trueClass = c.true === null ? "" : data.classes[c.true];
        rows.push([c.id, c.fold, trueClass, data.classes[c.pred], m.name, r.rating, r.note]);
      });
    });
    return rows.map((row) => row.map(csvCell).join(",")).join("\\r\\n") + "\\r\\n";
  }

  function downloadCsv() {
    // The BOM lets spreadsheet programs read non-ASCII notes as UTF-8.
    const blob = new Blob(["\\ufeff" + ratingsCsv()], { type: "text/csv;charset=utf-8" });
    const url = URL.createObjectURL(blob);
    const link = document.createElement("a");
    link.href = url;
    link.download = "ratings.csv";
    document.body.appendChild(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  }

  function setOpacity() {
    const value = Number(byId("opacity").value);
    document.documentElement.style.setProperty("--overlay-opacity", String(value / 100));
    byId("opacity-value").textContent = `${value} %`;
  }

  for (const id of ["f-outcome", "f-outcome-class", "f-true", "f-pred", "f-min", "f-max"]) {
    byId(id).addEventListener("input", applyFilters);
    byId(id).addEventListener("change", applyFilters);
  }
  for (const radio of document.querySelectorAll("input[name=map]")) {
    radio.addEventListener("change", () => { if (radio.checked) showMap(Number(radio.value)); });
  }
  for (const card of cards) {
    card.querySelector(".rating").addEventListener("change", () => storeRating(card));
    card.querySelector(".rating-note").addEventListener("input", () => storeRating(card));
  }
  byId("opacity").addEventListener("input", setOpacity);
  byId("download").addEventListener("click", downloadCsv);
  byId("clear").addEventListener("click", () => {
    if (!window.confirm("Delete all ratings entered on this page?")) return;
    ratings.clear();
    saveRatings();
    showMap(currentMap);
  });

  const checkedMap = document.querySelector("input[name=map]:checked");
  showMap(checkedMap ? Number(checkedMap.value) : 0);
  setOpacity();
  applyFilters();
  showRatedCount();
})();
"""
