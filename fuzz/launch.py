"""Start atheris on one target module, with hwsflow (and PyYAML, which the config parser drives) instrumented.

    python -m fuzz.launch fuzz.psample_target CORPUS_DIR [libFuzzer flags...]

fuzz.run builds this command line; run it by hand for libFuzzer flags the runner does not offer.
Only these packages are instrumented: atheris.instrument_all() would take seconds over every loaded
module (construct included) before the first input.
"""

from __future__ import annotations

import importlib
import sys

INSTRUMENTED = ("hwsflow", "yaml")


def main(argv: list[str]) -> None:
    import atheris

    if len(argv) < 2:
        sys.exit("usage: python -m fuzz.launch TARGET_MODULE [CORPUS_DIR] [libFuzzer flags...]")
    with atheris.instrument_imports(include=list(INSTRUMENTED)):
        target = importlib.import_module(argv[1])
    atheris.Setup([argv[0], *argv[2:]], target.one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
