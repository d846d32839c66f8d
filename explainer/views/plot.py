"""The report's figure: mean score against layer depth per model, and the histogram of scores.

Depth is `layer / (n_layers - 1)` so models of different depth share one axis (the paper's
finding that scores fall with depth and with model size reads off one panel). matplotlib runs
headless (Agg); nothing is imported until a plot is asked for.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from explainer.views.formats import format_params

GOOD = 0.8
_STYLES = ("-", "--", ":", "-.")


def _pairs(rows) -> list[tuple[str, str, str]]:
    """(explainer, simulator, side): each is its own line; the positive side first."""
    return sorted({(r.explainer, r.simulator, r.side) for r in rows},
                  key=lambda p: (p[2] != "pos", p))


def _label(pair: tuple[str, str, str], pairs: list) -> str:
    """What tells this line apart: the explainer, and the side when there are two."""
    two_sides = len({p[2] for p in pairs}) > 1
    two_sims = len({p[1] for p in pairs}) > 1
    return pair[0] + (f" × {pair[1]}" if two_sims else "") + (f" · {pair[2]}" if two_sides else "")


def _title(pairs: list[tuple[str, str, str]]) -> str:
    explainers = sorted({p[0] for p in pairs})
    simulators = sorted({p[1] for p in pairs})
    return (f"explainer{'s' if len(explainers) > 1 else ''}: {', '.join(explainers)}"
            f"  ·  simulator{'s' if len(simulators) > 1 else ''}: {', '.join(simulators)}")


def _depth_panel(ax, layer_rows, pairs, model_order: list[str]) -> None:
    colors = {m: f"C{i % 10}" for i, m in enumerate(model_order)}
    for m in model_order:
        for pi, pair in enumerate(pairs):
            pts = sorted((r for r in layer_rows if r.model == m and (r.explainer, r.simulator,
                          r.side) == pair and r.mean is not None and r.depth is not None),
                         key=lambda r: r.depth)
            if not pts:
                continue
            x = np.array([r.depth for r in pts])
            y = np.array([r.mean for r in pts])
            name = f"{m} ({format_params(pts[0].n_params)})"
            label = name if len(pairs) == 1 else f"{name} · {_label(pair, pairs)}"
            ax.plot(x, y, _STYLES[pi % len(_STYLES)], marker="o", color=colors[m], label=label)
            ax.fill_between(x, [r.ci_low for r in pts], [r.ci_high for r in pts],
                            color=colors[m], alpha=0.15 / len(pairs), linewidth=0)
    ax.axhline(0.0, color="0.6", linewidth=0.8)
    ax.set_xlim(-0.03, 1.03)
    ax.set_xlabel("layer depth (0 = first layer, 1 = last layer)")
    ax.set_ylabel("mean score (valid correlation), 95% CI band")
    ax.set_title("Mean score by depth")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small", loc="best",
                  title="model (parameters)" + (" · explainer" if len(pairs) > 1 else ""))


def _hist_panel(ax, head, model_names: dict[str, str], model_order_keys: list[str],
                pairs: list[tuple[str, str]]) -> None:
    ok = head[(head["status"] == "ok") & head["score"].notna()]
    bins = np.linspace(-1.0, 1.0, 41)
    for i, mkey in enumerate(model_order_keys):
        for pi, (ex, sim, side) in enumerate(pairs):
            sel = (ok["model"] == mkey) & (ok["explainer"] == ex) & (ok["simulator"] == sim) \
                & (ok["side"] == side)
            s = ok[sel]["score"].to_numpy(dtype=np.float64)
            if not s.size:
                continue
            name = model_names.get(mkey, mkey) + (
                "" if len(pairs) == 1 else f" · {_label((ex, sim, side), pairs)}")
            ax.hist(s, bins=bins, histtype="step", linewidth=1.8, color=f"C{i % 10}",
                    linestyle=_STYLES[pi % len(_STYLES)], label=f"{name} (n={s.size})")
    ax.axvline(GOOD, color="0.3", linestyle="--", linewidth=1, label=f"score = {GOOD}")
    ax.set_xlim(-1, 1)
    ax.set_xlabel("score (correlation of simulated and real activations)")
    ax.set_ylabel("neurons")
    from matplotlib.ticker import MaxNLocator

    ax.yaxis.set_major_locator(MaxNLocator(integer=True))  # counts of neurons
    ax.set_title("Distribution of scores")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="upper left")


def write(path: Path, layer_rows, head, models_meta: dict, controls=None,
          density=None) -> Path:
    """Write the two-panel PNG to `path`; `layer_rows` from report.aggregate(by='layer').

    With `controls` (views.controls rows), a third panel shows own − shuffled per pair, and
    flags the pairs with no signal. With `density` (views.density.with_density rows), one more
    panel plots judge score against firing density."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = _pairs(layer_rows)
    names = {k: v.get("model", k) for k, v in models_meta.items()}
    model_order = list(dict.fromkeys(r.model for r in layer_rows))  # already smallest first
    keys_by_name = {names.get(k, k): k for k in head["model"].unique()}
    order_keys = [keys_by_name[m] for m in model_order if m in keys_by_name]
    ctl = [r for r in controls or [] if r.diff is not None]
    dens = density is not None and not density.empty and density["density"].notna().any()
    n_panels = 2 + bool(ctl) + bool(dens)
    width = 6.3 * n_panels if dens else (19 if ctl else 12)
    fig, axes = plt.subplots(1, n_panels, figsize=(width, 4.8), dpi=110)
    try:
        _depth_panel(axes[0], layer_rows, pairs, model_order)
        _hist_panel(axes[1], head, names, order_keys, pairs)
        if ctl:
            from explainer.views import controls as control_panel

            control_panel.draw(axes[2], ctl)
        if dens:
            from explainer.views import density as density_panel

            density_panel.draw(axes[-1], density[density["density"].notna()])
        fig.suptitle(_title(pairs), fontsize=12)
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp.png")
        fig.savefig(tmp, format="png")
        tmp.replace(path)
    finally:
        plt.close(fig)
    return path
