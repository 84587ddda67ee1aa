"""analysis.figures: plain data in, plotly figures out; standalone HTML that works offline."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import pytest

from analysis import figures


def test_auroc_vs_layer_has_null_band_curves_and_gaps():
    fig = figures.auroc_vs_layer([0, 1, 2], {"contrast": [0.4, 0.9, None], "parent": [0.5, 0.5, float("nan")]},
                                 null_best=[0.8, 0.85, 0.9], null_median=[0.6, 0.6, 0.7], dashed=["parent"])
    assert isinstance(fig, go.Figure)
    names = [t.name for t in fig.data]
    assert "contrast" in names and "parent" in names
    band = [t for t in fig.data if t.fill == "tonexty"]
    assert len(band) == 1 and list(band[0].y) == [0.8, 0.85, 0.9]
    contrast = next(t for t in fig.data if t.name == "contrast")
    assert list(contrast.y) == [0.4, 0.9, None]
    parent = next(t for t in fig.data if t.name == "parent")
    assert parent.line.dash == "dash" and parent.y[2] is None
    with pytest.raises(ValueError, match="3 layers"):
        figures.auroc_vs_layer([0, 1, 2], {"bad": [0.5]})


def test_score_distributions_skips_empty_groups():
    rng = np.random.default_rng(0)
    fig = figures.score_distributions({"clean": rng.normal(size=50), "triggered": rng.normal(2, size=40),
                                       "red-team": np.array([])})
    assert [t.name for t in fig.data] == ["clean (n=50)", "triggered (n=40)"]


def test_pca_recovers_the_planted_axis():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 16)) * 0.1
    X[:, 3] += np.where(np.arange(200) < 100, 5.0, -5.0)
    coords, ratio = figures.pca_2d(X)
    assert coords.shape == (200, 2) and ratio[0] > 0.9
    assert abs(np.corrcoef(coords[:, 0], X[:, 3])[0, 1]) > 0.99
    fig = figures.pca_scatter(X, {"kind": ["a"] * 100 + ["b"] * 100, "flag": [True, False] * 100},
                              hover=[str(i) for i in range(200)])
    assert len(fig.data) == 4  # 2 categories x 2 panels
    with pytest.raises(ValueError):
        figures.pca_scatter(X, {"short": ["a"] * 3})


def test_write_html_is_standalone_and_offline(tmp_path):
    f1 = figures.auroc_vs_layer([0, 1], {"p": [0.5, 0.7]}, [0.6, 0.6])
    f2 = figures.score_distributions({"x": np.arange(5.0)})
    p = figures.write_html(tmp_path / "a.html", [f1, f2], title="T <&>", intro_lines=["line <b>"],
                           table=[["layer", "auroc"], ["0", "0.50"]])
    text = p.read_text()
    assert "<script src=" not in text  # no CDN: plotly.js is inline
    assert text.count("Plotly.newPlot") == 2
    assert len(text) > 1_000_000  # the embedded plotly.js bundle (once)
    assert "T &lt;&amp;&gt;" in text and "line &lt;b&gt;" in text and "<th>layer</th>" in text
    assert not list(tmp_path.glob(".*tmp*"))
