"""`xaibench run`: one experiment from a TOML config, every stage chained."""

from __future__ import annotations

from pathlib import Path

import click

from xaibench.cli.options import OutFolder


@click.command("run", short_help="Run an experiment described in a TOML config, stage by stage.")
@click.argument("config", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="SECTION.KEY=VALUE",
    help="Override a setting of the config (VALUE as in TOML, or bare text); repeatable, e.g. "
    "--set run.device=cpu --set data.subset=100 --set models.0.weights=none.",
)
@click.option(
    "--out",
    type=OutFolder(),
    default=None,
    help="Run folder, in place of the config's run.out.",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Print the plan (stages, what is done, the work of each) without loading any data.",
)
@click.option("--quiet", is_flag=True, help="No progress bars.")
def run_command(
    config: Path, overrides: tuple[str, ...], out: Path | None, dry_run: bool, quiet: bool
) -> None:
    """Run the experiment in CONFIG: dataset (download or index, verify, subset) -> generate ->
    evaluate (every protocol) -> sanity (when the config has [sanity]) -> compare -> report.

    Every setting is checked before any work. Re-running skips what is done, resumes what was
    cut short, and re-runs only the stages a changed setting affects (and those after them).
    OUT/run.json records the resolved config, its sha256 (also the last column of every table),
    versions, device, the dataset's digest and each stage's status and outputs. Works under
    `torchrun --nproc-per-node N -m xaibench run CONFIG`. Presets are in configs/.

    \b
    Example:
      xaibench run configs/demo.toml
      xaibench run configs/tgrad-paper.toml --set data.subset=500 --dry-run
    """
    from xaibench.experiments.check import check_experiment
    from xaibench.experiments.config import load_config

    experiment = load_config(config, overrides, out)
    if dry_run:
        from xaibench.experiments.describe import describe_plan
        from xaibench.experiments.manifest import Manifest
        from xaibench.experiments.plan import make_plan

        check_experiment(experiment)
        plan = make_plan(experiment)
        manifest = Manifest(plan.out)
        manifest.check_owner(experiment)
        for line in describe_plan(plan, manifest):
            click.echo(line)
        return
    from xaibench.experiments.run import run_experiment

    result = run_experiment(experiment, progress=not quiet, echo=click.echo)
    if not result.comparison:  # a process other than 0 under torchrun
        return
    click.echo("")
    click.echo(result.comparison, nl=False)
    ran, skipped = len(result.ran), len(result.skipped)
    click.echo(f"\n{ran} unit(s) run, {skipped} already done, in {result.seconds:.1f} s")
    click.echo(f"report: {result.report}")
    click.echo(f"manifest: {result.plan.out / 'run.json'}")
