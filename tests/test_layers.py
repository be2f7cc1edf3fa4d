"""
The package layout is the architecture (docs/architecture.rst): these tests
read every module's imports and hold each layer to what it may import, so
a frontend that reaches past the file system fails here, not in review.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

PACKAGE = Path(__file__).resolve().parent.parent / "cosgw"


def modules() -> Iterator[tuple[str, Path]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = list(relative.parts)
        if parts[-1] == "__init__":
            parts.pop()
        yield ".".join(parts), path


def imported_names(path: Path) -> set[str]:
    """
    Every module and module.name a file imports, at any depth (a lazy
    import inside a function counts the same).
    """
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def reaches(names: set[str], forbidden: str) -> bool:
    return any(n == forbidden or n.startswith(forbidden + ".") for n in names)


class LayerTests(SynchronousTestCase):
    def violations(self, layer: str, forbidden: tuple[str, ...]) -> list[str]:
        found = []
        for name, path in modules():
            if name != layer and not name.startswith(layer + "."):
                continue
            names = imported_names(path)
            found += [f"{name} imports {f}" for f in forbidden if reaches(names, f)]
        return found

    def test_modules_found(self) -> None:
        """The walk sees the packages (else every other test passes vacuously)."""
        names = {name for name, _ in modules()}
        for expected in (
            "cosgw.vfs.filesystem",
            "cosgw.transfer.upload",
            "cosgw.frontends.ftp.protocol",
            "cosgw.frontends.sftp.server",
            "cosgw.storage.cos",
            "cosgw.config.native",
        ):
            self.assertIn(expected, names)

    def test_frontends_use_the_file_system_only(self) -> None:
        """
        Frontends reach storage through cosgw.vfs alone: no transfer
        machinery, no store, no raw store errors, no throttles of their own.
        """
        forbidden = (
            "cosgw.transfer",
            "cosgw.storage",
            "cosgw.policy.throttle",
            "cosgw.interfaces.StoreError",
            "cosgw.interfaces.IObjectStore",
            "cosgw.testing",
        )
        self.assertEqual(self.violations("cosgw.frontends", forbidden), [])

    def test_only_the_cos_backend_imports_the_sdk(self) -> None:
        users = [
            name
            for name, path in modules()
            if reaches(imported_names(path), "qcloud_cos")
        ]
        self.assertEqual(users, ["cosgw.storage.cos"])

    def test_lower_layers_know_no_protocol(self) -> None:
        for layer in ("cosgw.vfs", "cosgw.transfer", "cosgw.storage", "cosgw.policy"):
            self.assertEqual(
                self.violations(layer, ("cosgw.frontends", "twisted.protocols.ftp")),
                [],
            )
            self.assertEqual(self.violations(layer, ("twisted.conch",)), [])

    def test_transfer_and_storage_below_the_file_system(self) -> None:
        self.assertEqual(self.violations("cosgw.transfer", ("cosgw.vfs",)), [])
        self.assertEqual(
            self.violations("cosgw.storage", ("cosgw.vfs", "cosgw.transfer")), []
        )

    def test_config_imports_nothing_of_cosgw(self) -> None:
        """Everything imports the config; it must stay a leaf."""
        names = [
            f"{name} imports {n}"
            for name, path in modules()
            if name.startswith("cosgw.config")
            for n in imported_names(path)
            if n.startswith("cosgw") and not n.startswith("cosgw.config")
        ]
        self.assertEqual(names, [])

    def test_no_global_reactor_at_module_level(self) -> None:
        """Rule 2: the reactor is injected; only a function may fetch it."""
        offenders = []
        for name, path in modules():
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for node in tree.body:
                if isinstance(node, ast.ImportFrom) and node.module == (
                    "twisted.internet"
                ):
                    if any(alias.name == "reactor" for alias in node.names):
                        offenders.append(name)
                if isinstance(node, ast.Import) and any(
                    alias.name == "twisted.internet.reactor" for alias in node.names
                ):
                    offenders.append(name)
        self.assertEqual(offenders, [])

    def test_modules_stay_small(self) -> None:
        """No module grows past what one can hold in one's head."""
        big = [
            f"{name}: {lines} lines"
            for name, path in modules()
            if (lines := len(path.read_text(encoding="utf-8").splitlines())) > 650
        ]
        self.assertEqual(big, [])


class PackagingTests(SynchronousTestCase):
    def test_every_package_is_installed(self) -> None:
        """
        setup.cfg lists packages one by one: a new package left out works
        in an editable install and vanishes from a real one.
        """
        setup = (PACKAGE.parent / "setup.cfg").read_text(encoding="utf-8")
        listed = set(setup.split("packages =", 1)[1].split("\n\n")[0].split())
        listed = {name for name in listed if name.startswith("cosgw")}
        packages = {
            ".".join(init.parent.relative_to(PACKAGE.parent).parts)
            for init in PACKAGE.rglob("__init__.py")
        }
        self.assertEqual(packages - listed, set())
