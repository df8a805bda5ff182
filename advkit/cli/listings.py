"""The listings: plugins, attacks (with their parameters), models, constraint sets, data sets; all take --json."""

from __future__ import annotations

import click

from advkit.cli.options import emit_json


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def plugins(as_json: bool) -> None:
    """List loaded plugins with their hooks, versions and any name two plugins both register."""
    from advkit.registry import list_plugins

    rows = list_plugins()
    if as_json:
        emit_json(rows)
        return
    for row in rows:
        origin = "built-in" if row["builtin"] else (row["distribution"] or "registered")
        click.echo(f"{row['name']:<16} {row['version'] or '-':<10} {origin:<14} {', '.join(row['hooks'])}")
        for conflict in row["conflicts"]:
            click.echo(f"  CONFLICT {conflict} (neither is used)")


def _listing(kind: str, as_json: bool, names: tuple[str, ...] = (), params: bool = False) -> None:
    from advkit import registry

    items = {"attack": registry.attacks, "model": registry.models, "constraint": registry.constraints}[kind]()
    get = {"attack": registry.get_attack, "model": registry.get_model_spec, "constraint": registry.get_constraint}[kind]
    chosen = [get(name) for name in names] if names else list(items.values())
    conflicts = [] if names else list(items.conflicts.values())
    if as_json:
        rows = []
        for item in chosen:
            row = {"name": item.name, "description": item.description, "plugin": item.plugin.name}
            if kind == "attack":
                row.update(
                    targeted=item.obj.targeted,
                    accepts_target=item.obj.accepts_target,
                    params=[spec.to_dict() for spec in item.obj.param_specs()],
                )
            rows.append(row)
        emit_json(
            rows + [{"name": c.name, "description": None, "plugin": None, "conflict": c.message()} for c in conflicts]
        )
        return
    width = max((len(name) for name in [*(i.name for i in chosen), *(c.name for c in conflicts)]), default=0)
    for item in chosen:  # one column, however long the names
        click.echo(f"{item.name:<{width}}  {item.description}")
        if kind == "attack" and (params or names):
            specs = item.obj.param_specs()
            if not specs:
                click.echo(f"{'':<{width}}    (no parameters)")
            for spec in specs:
                default = "None" if spec.default is None else repr(spec.default)
                doc = f"; {spec.bounds.doc}" if spec.bounds.doc else ""
                click.echo(
                    f"{'':<{width}}    -p {spec.name} ({spec.type_name}, default {default}): {spec.describe()}{doc}"
                )
    for conflict in conflicts:
        click.echo(f"{conflict.name:<{width}}  CONFLICT: {conflict.message()}")


@click.command()
@click.argument("names", nargs=-1)
@click.option("--params", is_flag=True, help="Also list each attack's parameters: type, default, valid range.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (parameters included).")
def attacks(names: tuple[str, ...], params: bool, as_json: bool) -> None:
    """List registered attacks; with NAMES (or --params), their parameters (for -p key=value)."""
    _listing("attack", as_json, names, params)


def _model_specs_epilog() -> str:
    from advkit.model_specs import describe_specs

    return "\b\n" + describe_specs().replace("\n\n", "\n\n\b\n")  # \b: click keeps the table's lines as they are


@click.command(epilog=_model_specs_epilog())
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def models(as_json: bool) -> None:
    """List registered models; --model also takes the other spec forms below."""
    _listing("model", as_json)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def constraints(as_json: bool) -> None:
    """List registered constraint sets (names for --constraints)."""
    _listing("constraint", as_json)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def datasets(as_json: bool) -> None:
    """List registered data sets (specs for --data), with their arguments and options."""
    from advkit.datasets import dataset_rows

    rows = dataset_rows()
    if as_json:
        emit_json(rows)
        return
    width = max((len(row["usage"] if "usage" in row else row["name"]) for row in rows), default=0)
    for row in rows:
        if "conflict" in row:
            click.echo(f"{row['name']:<{width}}  CONFLICT: {row['conflict']}")
            continue
        click.echo(f"{row['usage']:<{width}}  {row['description']}")


COMMANDS = [plugins, attacks, models, constraints, datasets]
