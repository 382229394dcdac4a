"""Compare and Interpolation screens."""

import json

from textual.widgets import OptionList, SelectionList
from textual_plotext import PlotextPlot

from app_fixtures import (CIFAR, DIST0, DIST1, IMP0, IMP1, RAND0, demo_store, make_test_app, on_screen, round_row,
                          run_async, screen_text, settled, wait_for)
from dpcore.analysis.figures import colors as figure_colors
from dpcore.palette import SOURCE_COLORS, color_of, colors, rgb
from dpcore.summary import experiment_tables, headline_lines
from dptui.app.compare_screen import Curve, curves, t2m_summary
from dptui.app.model import build_view
from dptui.app.widgets import RowTable
from dptui.export import to_html, to_latex, to_markdown

DEMO = [IMP0, IMP1, DIST0, DIST1, RAND0]


async def open_screen(app, pilot, opener, name):
    await wait_for(pilot, lambda: settled(app, "RunsScreen"), what="the store to load")
    opener()
    await wait_for(pilot, lambda: settled(app, name), what=name)


async def shows(app, pilot, text: str) -> None:
    await wait_for(pilot, lambda: text in screen_text(app), what=f"{text!r} on the screen")


def test_curves_average_seeds_per_method_and_keep_the_dense_line(tmp_path):
    runs = demo_store(tmp_path)
    views = [build_view(r, json.loads((runs / r / "results.json").read_text()), None, None) for r in DEMO]
    lines, dense = curves(views)
    assert [c.label for c in lines] == ["imp", "distilled", "random"]
    imp = lines[0]
    assert [round(x, 2) for x in imp.xs] == [20.0, 36.0, 48.8]
    seeds = [round_row("imp", 1, seed)["val_acc"] for seed in (0, 1)]
    assert abs(imp.ys[0] - 100 * sum(seeds) / 2) < 1e-9 and seeds[0] != seeds[1]  # mean of round 1's seeds
    assert dense == [("dense", 96.2)]
    cifar = build_view(CIFAR, json.loads((runs / CIFAR / "results.json").read_text()), None, None)
    lines, _ = curves(views[:1] + [cifar])
    assert [c.label for c in lines] == ["cifar/imp", "demo/imp"]  # two experiments
    assert lines[0].color != lines[1].color and lines[1].color.startswith("#")  # two shades of imp's blue


def test_curves_and_time_to_mask_name_each_synthetic_source(tmp_path):
    runs = demo_store(tmp_path)
    imp = json.loads((runs / IMP0 / "results.json").read_text())
    dist = json.loads((runs / DIST0 / "results.json").read_text())
    other = {**dist, "run_id": "v2", "variant": "gm ipc10",
             "rounds": [{**r, "time_to_mask_s": r["time_to_mask_s"] * 2} for r in dist["rounds"]]}
    views = [build_view(r["run_id"], r, None, None) for r in (imp, {**dist, "variant": "dm ipc10"}, other)]
    lines, _ = curves(views)
    assert [c.label for c in lines] == ["imp", "distilled dm ipc10", "distilled gm ipc10"]
    text = t2m_summary(views).plain
    deepest = imp["rounds"][-1]["time_to_mask_s"] / dist["rounds"][-1]["time_to_mask_s"]
    assert f"dm ipc10 {deepest:.2f}x" in text and f"gm ipc10 {deepest / 2:.2f}x" in text
    assert "distilled " + f"{deepest:.2f}x faster" not in text  # no single "distilled" speed-up


@run_async
async def test_compare_plots_the_runs_shows_time_to_mask_and_the_speedup_table(tmp_path):
    runs = demo_store(tmp_path / "runs")
    app = make_test_app(runs)
    async with app.run_test(size=(100, 30)) as pilot:
        await open_screen(app, pilot, lambda: app.open_compare(DEMO), "CompareScreen")
        await shows(app, pilot, "Compare  5 runs: demo")
        results = [json.loads((runs / r / "results.json").read_text()) for r in DEMO]
        results = [{**r, "status": r["status"]} for r in results]
        rounds, headline, speedup = experiment_tables(results)[:3]  # (then the Failed runs table: imp s1 failed)
        line, floor = headline_lines(headline)  # the headline, from the same row model as the tables
        assert line.startswith("distilled: the 48.8% mask 3.7x faster than imp (") and floor.startswith("random: ")
        assert "distilled: the 48.8% mask 3.7x faster than imp" in screen_text(app)
        plot = app.screen.query_one(PlotextPlot)
        assert "imp" in plot.plt.build() and "distilled" in plot.plt.build()
        assert app.screen.current_table().title == rounds.title
        await pilot.press("t")
        assert app.screen.current_table().title == headline.title
        await pilot.press("t")
        assert app.screen.current_table().title == speedup.title
        assert len(app.screen.query_one(RowTable).keys) == len(speedup.rows) == 3
        out = runs / "exports" / "compare-Speed-up-of-distilled-over-imp"
        for key, suffix in (("m", ".md"), ("h", ".html")):
            await pilot.press("e")
            await wait_for(pilot, lambda: on_screen(app, "ExportModal"), what="the export dialog")
            await pilot.press(key)
            await wait_for(pilot, lambda: out.with_suffix(suffix).exists() and on_screen(app, "CompareScreen"),
                           what=f"the {suffix} export")
        assert out.with_suffix(".md").read_text() == to_markdown([speedup])  # same as the headless export
        assert out.with_suffix(".html").read_text() == to_html([speedup], f"dptui: {speedup.title}")


@run_async
async def test_picking_runs_in_compare(tmp_path):
    app = make_test_app(demo_store(tmp_path / "runs"))
    async with app.run_test(size=(100, 30)) as pilot:
        await open_screen(app, pilot, lambda: app.open_compare([IMP0, DIST0]), "CompareScreen")
        pick = app.screen.query_one(SelectionList)
        assert sorted(pick.selected) == sorted([IMP0, DIST0])
        assert app.focused is pick
        await pilot.press("home", "space")  # cifar imp s0
        await wait_for(pilot, lambda: sorted(app.screen.run_ids) == sorted([CIFAR, IMP0, DIST0]), what="cifar picked")
        await shows(app, pilot, "cifar: time-to-mask imp")
        await pilot.press("a")  # all -> none
        await wait_for(pilot, lambda: app.screen.run_ids == [], what="none picked")
        await shows(app, pilot, "pick two or more runs")
        await pilot.press("a")
        await wait_for(pilot, lambda: len(app.screen.run_ids) == 6, what="all picked")
        await pilot.press("escape")
        await wait_for(pilot, lambda: on_screen(app, "RunsScreen"), what="the runs screen")


@run_async
async def test_interpolation_curves_and_the_empty_state(tmp_path):
    runs = demo_store(tmp_path / "runs")
    app = make_test_app(runs)
    async with app.run_test(size=(100, 30)) as pilot:
        await open_screen(app, pilot, lambda: app.open_interpolation(IMP0), "InterpolationScreen")
        await shows(app, pilot, "No interpolation analysis for demo imp s0 yet")
        assert app.screen.current_table() is None
        runs_list = app.screen.query_one(OptionList)
        assert "* demo distilled s0 · done" in str(runs_list.get_option_at_index(3).prompt)
        runs_list.highlighted = 3
        await wait_for(pilot, lambda: app.screen.run_id == DIST0 and app.screen.query_one(RowTable).keys,
                       what="distilled s0's curves")
        assert len(app.screen.query_one(RowTable).keys) == 3
        table = app.screen.current_table()
        assert [round(getattr(r["instability"], "mean", r["instability"]), 2) for r in table.rows] == [0.02, 0.04, 0.06]
        assert [r["round"] for r in table.rows] == [1, 2, 3]
        assert "round 3 k=0" in app.screen.query_one(PlotextPlot).plt.build()
        await pilot.press("e")
        await wait_for(pilot, lambda: on_screen(app, "ExportModal"), what="the export dialog")
        await pilot.press("c")
        await wait_for(pilot, lambda: (runs / "exports" / f"instability-{DIST0}.csv").exists()
                       and on_screen(app, "InterpolationScreen"), what="the csv export")
        await pilot.press("escape")
        await wait_for(pilot, lambda: on_screen(app, "RunsScreen"), what="the runs screen")


def test_remaining_ticks_run_from_100_to_the_sparsest_mask_on_round_values():
    from dptui.app.compare_screen import remaining_ticks

    sparsities = [100 * (1 - 0.8 ** r) for r in range(1, 15)]
    ticks = remaining_ticks(sparsities)
    assert ticks[0] == 100.0 and abs(ticks[-1] - 100 * 0.8 ** 14) < 1e-3 and len(ticks) == 6
    assert all(any(abs(t - (100 - s)) < 1e-3 for s in sparsities) for t in ticks[1:])
    assert ticks == sorted(ticks, reverse=True)


@run_async
async def test_compare_plots_against_weights_remaining_on_a_log_axis_and_x_switches_to_linear(tmp_path):
    app = make_test_app(demo_store(tmp_path / "runs"))
    async with app.run_test(size=(120, 40)) as pilot:
        await open_screen(app, pilot, lambda: app.open_compare(DEMO), "CompareScreen")
        await shows(app, pilot, "Compare  5 runs: demo")
        plot = app.screen.query_one(PlotextPlot)
        assert "weights remaining % (log)" in plot.plt.build()
        await pilot.press("x")
        await wait_for(pilot, lambda: "weights remaining" not in app.screen.query_one(PlotextPlot).plt.build()
                       and "sparsity %" in app.screen.query_one(PlotextPlot).plt.build(),
                       what="the linear sparsity axis")
        await pilot.press("x")
        await wait_for(pilot, lambda: "weights remaining % (log)" in app.screen.query_one(PlotextPlot).plt.build(),
                       what="the log axis again")


# -- seed bands, a pinned baseline, one colour per method ------------------------------------------------

def val(method: str, rnd: int, seeds: tuple[int, ...]) -> list[float]:
    """The demo store's validated accuracies (%) of ``method``'s seeds at round ``rnd``."""
    return [100 * round_row(method, rnd, seed)["val_acc"] for seed in seeds]


def series(app) -> dict[str, tuple[list[float], list[float]]]:
    return {name: (xs, ys) for name, xs, ys in app.screen.drawn}


def close(a: list[float], b: list[float]) -> bool:
    return len(a) == len(b) and all(abs(x - y) < 1e-9 for x, y in zip(a, b))


def highlight(app, run_id: str) -> None:
    pick = app.screen.query_one(SelectionList)
    pick.highlighted = next(i for i in range(pick.option_count) if pick.get_option_at_index(i).value == run_id)


def test_a_curve_has_a_band_only_where_two_or_more_seeds_are_averaged():
    c = Curve(("demo", "imp"), "imp")
    c.add(1, 20.0, [96.0, 95.5, 96.5], 2)
    c.add(2, 36.0, [95.0, 95.0, 95.0], 1)
    assert c.band() == ([20.0], [95.5], [96.5])
    base = Curve(("demo", "random"), "random")
    base.add(1, 20.0, [94.0, 94.0, 94.0], 1)
    base.add(2, 50.0, [90.0, 90.0, 90.0], 1)  # another sparsity at round 2: no difference there
    diff = c.minus(base)
    assert diff.rounds == [1] and diff.ys == [2.0] and (diff.lo, diff.hi) == ([1.5], [2.5])


@run_async
async def test_compare_draws_a_min_max_band_for_methods_with_two_seeds(tmp_path):
    app = make_test_app(demo_store(tmp_path / "runs"))
    async with app.run_test(size=(120, 40)) as pilot:
        await open_screen(app, pilot, lambda: app.open_compare(DEMO), "CompareScreen")
        drawn = series(app)
        # distilled: seeds 0 and 1 at rounds 1-2 (seed 1 still runs round 3); imp: seed 1 failed after round 1
        assert close(drawn["distilled min"][1], [min(val("distilled", r, (0, 1))) for r in (1, 2)])
        assert close(drawn["distilled max"][1], [max(val("distilled", r, (0, 1))) for r in (1, 2)])
        assert drawn["distilled min"][0] == drawn["distilled"][0][:2]  # at the mean's x
        assert close(drawn["imp max"][1], [max(val("imp", 1, (0, 1)))])
        assert "random min" not in drawn and "random max" not in drawn  # one seed: no band
        assert "min–max of seeds" in app.screen.query_one(PlotextPlot).plt.build()


@run_async
async def test_pinning_a_baseline_plots_differences_and_adds_a_vs_baseline_column(tmp_path):
    runs = demo_store(tmp_path / "runs")
    app = make_test_app(runs)
    async with app.run_test(size=(120, 40)) as pilot:
        await open_screen(app, pilot, lambda: app.open_compare(DEMO), "CompareScreen")
        plain = app.screen.current_table()
        assert "vs_baseline" not in [c.key for c in plain.columns]
        highlight(app, CIFAR)  # not picked: no line to pin
        await pilot.press("b")
        assert app.screen.baseline is None
        highlight(app, IMP1)  # any run of imp pins imp's line
        await pilot.press("b")
        await shows(app, pilot, "baseline imp (b unpins)")
        assert "Δ accuracy vs imp (pts)" in app.screen.query_one(PlotextPlot).plt.build()
        imp = [sum(v) / len(v) for v in (val("imp", 1, (0, 1)), val("imp", 2, (0,)), val("imp", 3, (0,)))]
        dist = [sum(v) / len(v) for v in (val("distilled", 1, (0, 1)), val("distilled", 2, (0, 1)),
                                          val("distilled", 3, (0,)))]
        drawn = series(app)
        assert close(drawn["imp (baseline)"][1], [0.0, 0.0, 0.0])
        assert close(drawn["distilled"][1], [d - i for d, i in zip(dist, imp)])
        assert close(drawn["distilled max"][1], [max(val("distilled", r, (0, 1))) - imp[r - 1] for r in (1, 2)])

        table = app.screen.current_table()  # Rounds, with the column after val acc
        keys = [c.key for c in table.columns]
        assert keys == [c.key for c in plain.columns][:6] + ["vs_baseline"] + [c.key for c in plain.columns][6:]
        vs = {(r["method"], r["round"]): r["vs_baseline"] for r in table.rows}
        assert vs[("dense", 0)] is None and vs[("imp", 2)] == 0.0
        assert all(abs(vs[("distilled", r)] - (dist[r - 1] - imp[r - 1])) < 1e-9 for r in (1, 2, 3))
        assert "vs baseline pts" in screen_text(app)
        await pilot.press("t")  # the Headline: each method at its own round, against imp's there
        headline = {r["method"]: r for r in app.screen.current_table().rows}
        assert abs(headline["distilled"]["vs_baseline"] - headline["distilled"]["points"]) < 1e-9

        out = runs / "exports" / "compare-Headline.md"
        await pilot.press("e")
        await wait_for(pilot, lambda: on_screen(app, "ExportModal"), what="the export dialog")
        await pilot.press("m")
        await wait_for(pilot, lambda: out.exists() and on_screen(app, "CompareScreen"), what="the md export")
        assert "vs baseline pts" in out.read_text() and "minus imp's at the same round" in out.read_text()

        await pilot.press("b")  # the same line again: unpinned
        await wait_for(pilot, lambda: app.screen.baseline is None and "baseline" not in screen_text(app).splitlines()[0],
                       what="the baseline unpinned")
        assert close(series(app)["imp"][1], imp)
        assert [c.key for c in app.screen.current_table().columns] == [c.key for c in experiment_tables(
            [v.results_for_tables() for v in app.screen.views()])[1].columns]  # the Headline as it was


@run_async
async def test_a_method_has_the_same_colour_in_figures_compare_and_exports(tmp_path):
    app = make_test_app(demo_store(tmp_path / "runs"))
    async with app.run_test(size=(120, 40)) as pilot:
        await open_screen(app, pilot, lambda: app.open_compare(DEMO), "CompareScreen")
        lines = {c.label: c.color for c in app.screen.lines}
        assert lines == figure_colors(list(lines)) == {"imp": "#1f77b4", "distilled": "#d62728", "random": "#7f7f7f"}
        ansi = app.screen.query_one(PlotextPlot).plt.build()
        assert all("38;2;{};{};{}m".format(*rgb(c)) in ansi for c in lines.values())  # plotext's RGB colours
        table = app.screen.query_one(RowTable)
        cells = {table.get_row_at(i)[0].plain.strip(): table.get_row_at(i)[0].style for i in range(table.row_count)}
        assert cells["imp"] == lines["imp"] and cells["distilled"] == lines["distilled"] and not cells["dense"]
        rounds = app.screen.current_table()
        assert '<td class="t" style="color:#d62728">distilled</td>' in to_html([rounds])
        assert r"\dptuimethod{1F77B4}{imp}" in to_latex([rounds]) and r"\providecommand{\dptuimethod}" in to_latex([rounds])


def test_the_palette_gives_each_source_a_stable_shade_of_its_method():
    assert color_of("distilled") == color_of("distilled dm ipc10") == SOURCE_COLORS["dm"]
    dm = [color_of(f"distilled dm ipc{n}") for n in (1, 10, 50)]
    assert len(set(dm)) == 3 and color_of("distilled mtt ipc10") == SOURCE_COLORS["mtt"]
    assert color_of("imp k=1") == color_of("imp k=1") != color_of("imp")  # a rewind: a shade of imp's blue
    labels = ["imp k=0", "imp k=1", "imp k=2", "imp k=3", "imp k=500 steps"]
    picked = colors(labels)
    assert len(set(picked.values())) == len(labels) and picked == colors(labels[::-1])  # distinct, order-free
