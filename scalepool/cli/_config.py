"""``--config FILE.yaml`` for ``scalepool train``, ``search`` and ``reproduce`` (configargparse).

A config file holds long flag names without their dashes as keys
(``lr: 0.001``, ``batch-size: 4``, ``no-progress: true``, lists for repeated or
multi-value flags: ``model-option: [n_features=8, n_rbf=4]``).  Flags given on
the command line win over the file.  A key that names no flag of the command is
an error naming the key and the file.

After a run, the options it was given (on the command line and in a config
file, defaults left out, paths made absolute) are written to ``config.yaml`` in
its ``--out`` folder (:func:`save_cli_options`), so ``--config RUN/config.yaml``
repeats it (with ``--out OTHER``: in another folder).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import configargparse

#: The file each run folder gets: the command-line options of the run, as YAML.
CLI_CONFIG = "config.yaml"
_RECORD = "cli_options"  # namespace attribute holding the given options (raw strings)
_SAVE_TO = "config_save_dir"  # namespace attribute: the option naming the folder that gets CLI_CONFIG


class ConfigArgumentParser(configargparse.ArgumentParser):
    """An argument parser that also reads YAML config files (``--config``), refuses unknown
    keys in them, and records the options it was given (``args.cli_options``)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("config_file_parser_class", configargparse.YAMLConfigFileParser)
        kwargs.setdefault("args_for_setting_config_path", [])
        super().__init__(*args, **kwargs)

    def _config_actions(self) -> list[argparse.Action]:
        return [a for a in self._actions if getattr(a, "is_config_file_arg", False)]

    def parse_known_args(self, args=None, namespace=None, **kwargs):
        config_actions = self._config_actions()
        if not config_actions:
            return super().parse_known_args(args, namespace, **kwargs)
        tokens = list(args) if args is not None else []
        if "-h" not in tokens and "--help" not in tokens:
            for path in _config_paths(tokens, config_actions):
                self._check_config_keys(path)
        namespace, extra = super().parse_known_args(tokens, namespace, **kwargs)
        setattr(namespace, _RECORD, self._given_options())
        return namespace, extra

    def _check_config_keys(self, path: str) -> None:
        """Refuse a config file whose keys are not long flags of this command."""
        if not Path(path).is_file():
            self.error(f"config file not found: {path}")
        with open(path) as stream:
            try:
                items = configargparse.YAMLConfigFileParser().parse(stream)
            except configargparse.ConfigFileParserException as err:
                self.error(f"config file {path}: {err}")
        known = {key for action in self._actions for key in self.get_possible_config_keys(action)}
        known -= {key for action in self._config_actions() for key in self.get_possible_config_keys(action)}
        unknown = [key for key in items if key not in known]
        if unknown:
            flags = ", ".join(sorted(k for k in known if not k.startswith("-") and k != "help"))
            self.error(
                f"config file {path}: unknown key(s) {', '.join(repr(k) for k in unknown)}; "
                f"keys are the long flags of '{self.prog}' without dashes: {flags}"
            )

    def _given_options(self) -> dict:
        """``{flag without dashes: raw value}`` of the options this parse was given on the
        command line and in config files (no defaults): strings as typed, lists for
        repeated or multi-value flags, ``True`` for flags without a value, absolute paths."""
        sources = self.get_source_to_settings_dict()
        tokens: list[str] = []
        for source, settings in sources.items():
            if source.startswith("config_file"):
                for key, (action, value) in settings.items():
                    tokens += self.convert_item_to_command_line_arg(action, key, value)
        tokens += list(sources.get("command_line", {}).get("", (None, []))[1])
        saved = []
        for action in self._actions:
            saved.append((action, action.type, action.default, action.choices, action.required))
            action.type, action.default, action.choices, action.required = (
                None,
                argparse.SUPPRESS,
                None,
                False,
            )
        try:
            raw, _ = argparse.ArgumentParser.parse_known_args(self, tokens, argparse.Namespace())
        finally:
            for action, kind, default, choices, required in saved:
                action.type, action.default, action.choices, action.required = (
                    kind,
                    default,
                    choices,
                    required,
                )
        given = {}
        for action in self._actions:
            long = [s for s in action.option_strings if s.startswith("--")]
            if not long or action.dest not in vars(raw) or getattr(action, "is_config_file_arg", False):
                continue
            if action.dest == "help":
                continue
            value = getattr(raw, action.dest)
            if action.nargs == 0:
                value = True
            elif action.type is Path or (action.dest == "storage" and "://" not in value):
                value = _absolute(value)  # a rerun from another folder finds the same files
            given[long[0][2:]] = value
        return given


def _absolute(value):
    if isinstance(value, list):
        return [_absolute(v) for v in value]
    return str(Path(value).expanduser().resolve())


def _config_paths(tokens: list[str], actions: list[argparse.Action]) -> list[str]:
    """The config files named in ``tokens`` (``--config FILE`` or ``--config=FILE``)."""
    flags = {s for action in actions for s in action.option_strings}
    paths = []
    for i, token in enumerate(tokens):
        name, eq, value = token.partition("=")
        if name in flags:
            if eq:
                paths.append(value)
            elif i + 1 < len(tokens):
                paths.append(tokens[i + 1])
    return paths


def add_config_argument(parser: argparse.ArgumentParser, save_to: str | None = "out") -> None:
    """Add ``--config FILE.yaml`` to a :class:`ConfigArgumentParser`; after a successful
    run, :func:`save_cli_options` writes the given options to the folder named by the
    option ``save_to`` (``None``: nowhere)."""
    parser.add_argument(
        "--config",
        is_config_file=True,
        metavar="FILE.yaml",
        help="YAML file of options: long flag names without dashes as keys (lr: 0.001); flags on the command line win. "
        f"Each run writes the options it was given to {CLI_CONFIG} in its --out folder, to repeat it",
    )
    parser.set_defaults(**{_SAVE_TO: save_to})


def save_cli_options(args: argparse.Namespace) -> Path | None:
    """Write ``config.yaml`` (the options ``args`` was given) into the run's output folder,
    when the command records one and that folder exists; returns its path."""
    import yaml

    from .._files import write_text

    option = getattr(args, _SAVE_TO, None)
    options = getattr(args, _RECORD, None)
    folder = getattr(args, option, None) if option else None
    if options is None or folder is None or not Path(folder).is_dir():
        return None
    text = "# options of this run: repeat it with --config THIS_FILE (and --out OTHER for a new folder)\n"
    text += yaml.safe_dump(options, sort_keys=False, allow_unicode=True)
    return write_text(Path(folder) / CLI_CONFIG, text)
