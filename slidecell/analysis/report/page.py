"""The report's HTML pieces: the page's style, figures embedded as PNG, cards and tables."""

from __future__ import annotations

import base64
import html
import io
import re

import pandas as pd


def png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def img(fig, alt: str) -> str:
    return f'<img class="plot" alt="{html.escape(alt)}" src="data:image/png;base64,{png(fig)}">'


CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0;color:#222;background:#f6f6f4}
header{background:#243447;color:#fff;padding:18px 32px}header h1{margin:0;font-size:22px}
header p{margin:4px 0 0;opacity:.8;font-size:13px}
main{max-width:1180px;margin:0 auto;padding:8px 24px 48px}
section{background:#fff;border-radius:8px;margin:18px 0;padding:16px 22px;box-shadow:0 1px 3px rgba(0,0,0,.08)}
h2{font-size:17px;margin:0 0 10px;color:#243447}p.caption{font-size:13px;color:#555;margin:6px 0}
.cards{display:flex;flex-wrap:wrap;gap:12px}.card{background:#f0f3f6;border-radius:6px;padding:10px 14px;min-width:130px}
.card b{display:block;font-size:20px}.card span{font-size:12px;color:#555}
img.plot{max-width:100%;height:auto}table{border-collapse:collapse;font-size:12px;margin:8px 0}
td,th{border-bottom:1px solid #e3e3e3;padding:3px 8px;text-align:right}th{background:#f0f3f6}
td:first-child,th:first-child{text-align:left}
.badge{display:inline-block;font-size:22px;font-weight:600;padding:6px 16px;border-radius:20px;color:#fff}
.cold{background:#4575b4}.compartmentalized{background:#d73027}.mixed{background:#1a9850}
.na{background:#f0f0f0;color:#444;padding:8px 12px;border-radius:6px;font-size:14px}
nav{font-size:13px;margin:10px 0}nav a{margin-right:12px;color:#243447}
.row{display:flex;flex-wrap:wrap;gap:16px;align-items:flex-start}
"""


def cards(items) -> str:
    return '<div class="cards">' + "".join(f'<div class="card"><b>{html.escape(str(v))}</b><span>{html.escape(k)}</span></div>'
                                           for k, v in items) + "</div>"


#: words of column names as a reader says them
_WORDS = {"um2": "(µm²)", "um": "(µm)", "mm2": "(mm²)", "per": "/", "pct": "(%)", "zscore": "z-score", "nhood": "neighbourhood"}


def readable(column: str) -> str:
    """A column name as a header: ``within_20um`` → ``within 20 µm``, ``density_per_mm2`` →
    ``density / mm²``, ``median_um`` → ``median (µm)``."""
    out = []
    for w in str(column).split("_"):
        m = re.fullmatch(r"(\d+(?:\.\d+)?)(um2|um|mm2)", w)
        if m:
            out.append(f"{m.group(1)} {_WORDS[m.group(2)].strip('()')}")
        else:
            out.append(_WORDS.get(w, w))
    text = " ".join(out).replace("/ (mm²)", "/ mm²").replace("/ (µm²)", "/ µm²")
    return text[:1].upper() + text[1:]


def table(df: pd.DataFrame, floats: int = 1) -> str:
    return df.rename(columns=readable).to_html(index=False, float_format=lambda v: f"{v:,.{floats}f}", border=0,
                                               escape=True)
