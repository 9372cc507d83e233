"""README "Column types in Parquet and Glue" is query_relay.column_types' tables, written out: the
table in the README is generated here and must be there as it is (regenerate it with
``python -m tests.unit.test_column_types_doc``)."""

from __future__ import annotations

from pathlib import Path

from query_relay.column_types import JSON_TEXT_KINDS, TABLES, Kind

README = Path(__file__).resolve().parents[2] / "README.md"
NAMES = {
    "esql": "ES\\|QL",
    "looker": "Looker",
    "veza": "Veza",
    "snowflake": "Snowflake",
    "databricks": "Databricks",
}
NOTES = {
    (
        "snowflake",
        "decimal",
    ): "scale 0 and precision <= 18: `int64` / `bigint`; else `decimal128(p, s)` / `decimal(p,s)` of its own",
    ("databricks", "decimal"): "`decimal128(p, s)` / `decimal(p,s)` of its own (`DECIMAL` alone: 10, 0)",
}


def markdown() -> str:
    lines = [
        "| provider | upstream types | Parquet (Arrow) | Glue, Parquet table | Glue, JSON Lines table |",
        "|---|---|---|---|---|",
    ]
    for provider, table in TABLES.items():
        grouped: dict[Kind, list[str]] = {}
        for type_name, kind in table.items():
            grouped.setdefault(kind, []).append(type_name)
        for kind, names in grouped.items():
            arrow, glue = kind.arrow, kind.glue
            note = NOTES.get((provider, kind.name))
            if kind.name == "json":
                note, glue = "`string`, the value's JSON text", "`string`"
            if note is not None and kind.name == "decimal":
                arrow, glue = note, "as Parquet"
            elif note is not None:
                arrow = note
            jsonl = (
                "string"
                if kind.name in JSON_TEXT_KINDS
                else ("as Parquet" if kind.name == "decimal" else glue)
            )
            types = ", ".join(f"`{name}`" for name in names)
            cells = [
                NAMES[provider],
                types,
                f"`{arrow}`" if note is None else arrow,
                f"`{glue}`" if note is None else glue,
                f"`{jsonl}`" if jsonl != "as Parquet" else jsonl,
            ]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append(f"| {NAMES[provider]} | any other | `string` | `string` | `string` |")
    return "\n".join(lines) + "\n"


def test_the_readme_prints_the_column_types_tables() -> None:
    assert markdown() in README.read_text(encoding="utf-8")


if __name__ == "__main__":
    print(markdown(), end="")
