# Runs `POST /process/code-run` Python code (read from stdin) as __main__, and reports every
# matplotlib figure shown (plt.show()) or still open at the end as one marker line on stdout:
#   \x1e\x1fcove-chart:<base64 of the chart's JSON>\n
# which cove-agent removes from the output and returns in `artifacts.charts` (type, title, png
# and, for line/scatter/bar/pie plots, the plotted data, as Daytona's SDKs read them).
import base64
import builtins
import importlib.abc
import io
import json
import linecache
import math
import os
import sys

_MARK = "\x1e\x1fcove-chart:"


def _num(v):
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _axis(ax, which):
    get = getattr(ax, f"get_{which}ticks")
    ticks = [t for t in (_num(t) for t in get()) if t is not None]
    labels = [t.get_text() for t in getattr(ax, f"get_{which}ticklabels")()]
    return {
        f"{which}_label": getattr(ax, f"get_{which}label")(),
        f"{which}_ticks": ticks,
        f"{which}_tick_labels": labels,
        f"{which}_scale": getattr(ax, f"get_{which}scale")(),
    }


def _points(xy):
    out = []
    for x, y in xy:
        x, y = _num(x), _num(y)
        if x is not None and y is not None:
            out.append([x, y])
    return out


def _label(artist):
    """The user's label; matplotlib's own placeholders (`_child0`, …) are none."""
    label = artist.get_label() or ""
    return "" if label.startswith("_") else label


def _axes_chart(ax):
    from matplotlib.collections import PathCollection
    from matplotlib.container import BarContainer
    from matplotlib.patches import Wedge

    chart = {"title": ax.get_title(), "elements": []}
    wedges = [p for p in ax.patches if isinstance(p, Wedge)]
    bars = [c for c in ax.containers if isinstance(c, BarContainer)]
    scatters = [c for c in ax.collections if isinstance(c, PathCollection)]
    lines = ax.get_lines()
    if wedges:
        chart["type"] = "pie"
        labels = [t.get_text() for t in ax.texts]
        for i, w in enumerate(wedges):
            label = w.get_label() or (labels[i] if i < len(labels) else "")
            chart["elements"].append({"label": label, "angle": _num(w.theta2 - w.theta1), "radius": _num(w.r)})
    elif bars:
        chart["type"] = "bar"
        chart.update({k: v for k, v in _axis(ax, "x").items() if k == "x_label"})
        chart.update({k: v for k, v in _axis(ax, "y").items() if k == "y_label"})
        tick_labels = {round(t, 6): lbl.get_text() for t, lbl in zip(ax.get_xticks(), ax.get_xticklabels())}
        for c in bars:
            group = _label(c)
            for r in c.patches:
                center = r.get_x() + r.get_width() / 2
                label = tick_labels.get(round(center, 6), str(_num(center)))
                chart["elements"].append({"label": label, "group": group, "value": str(_num(r.get_height()))})
    elif lines or scatters:
        chart["type"] = "line" if lines else "scatter"
        chart.update(_axis(ax, "x"))
        chart.update(_axis(ax, "y"))
        for ln in lines:
            chart["elements"].append({"label": _label(ln), "points": _points(ln.get_xydata())})
        for sc in scatters:
            chart["elements"].append({"label": _label(sc), "points": _points(sc.get_offsets())})
    else:
        chart["type"] = "unknown"
    return chart


def _figure_chart(fig):
    axes = [ax for ax in fig.get_axes() if ax.has_data()] or fig.get_axes()
    if len(axes) == 1:
        chart = _axes_chart(axes[0])
    elif axes:
        chart = {"type": "composite_chart", "elements": [_axes_chart(ax) for ax in axes]}
    else:
        chart = {"type": "unknown", "elements": []}
    title = fig._suptitle.get_text() if getattr(fig, "_suptitle", None) else ""
    if title or "title" not in chart:
        chart["title"] = title
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    chart["png"] = base64.b64encode(buf.getvalue()).decode()
    return chart


def _emit_figures():
    plt = sys.modules.get("matplotlib.pyplot")
    if plt is None:
        return
    for num in plt.get_fignums():
        fig = plt.figure(num)
        try:
            chart = _figure_chart(fig)
        except Exception as e:  # a chart we cannot describe must not fail the user's program
            print(f"cove: could not export figure {num}: {e}", file=sys.stderr)
            continue
        finally:
            plt.close(fig)
        data = base64.b64encode(json.dumps(chart).encode()).decode()
        sys.stdout.flush()
        os.write(1, f"{_MARK}{data}\n".encode())


class _PatchPyplot(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Wraps matplotlib.pyplot.show once pyplot is imported, so show() reports the figures."""

    def find_spec(self, name, path, target=None):
        if name != "matplotlib.pyplot":
            return None
        sys.meta_path.remove(self)
        try:
            import importlib.util

            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return None
        self._inner = spec.loader
        spec.loader = self
        return spec

    def create_module(self, spec):
        return self._inner.create_module(spec)

    def exec_module(self, module):
        self._inner.exec_module(module)
        module.show = lambda *a, **k: _emit_figures()


os.environ.setdefault("MPLBACKEND", "Agg")
sys.meta_path.insert(0, _PatchPyplot())
_code = sys.stdin.read()
sys.stdin = open(os.devnull)
linecache.cache["<code>"] = (len(_code), None, _code.splitlines(True), "<code>")
_main = {"__name__": "__main__", "__builtins__": builtins, "__doc__": None, "__file__": "<code>"}
try:
    exec(compile(_code, "<code>", "exec"), _main)
except SystemExit:
    _emit_figures()
    raise
except BaseException as _e:
    _tb = _e.__traceback__
    while _tb is not None and _tb.tb_frame.f_code.co_filename != "<code>":
        _tb = _tb.tb_next
    sys.stdout.flush()
    sys.stderr.write("".join(__import__("traceback").format_exception(type(_e), _e, _tb)))
    _emit_figures()
    sys.exit(1)
_emit_figures()
