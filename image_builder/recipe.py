"""Recipes: what an image creator asks the builder for, read strictly from a TOML file.

``load_recipe(path)`` reads a recipe (docs/creators.md): name and version, kind, Debian
suite, extra packages (their dependency closure comes from the archive), files to add,
users, IDB applications and any metadata field.  Every unknown key is an error naming its
dotted path (``files[1].mode``); counts, sizes and lengths are bounded; file sources must
lie inside the recipe's directory.  Errors are :class:`BuildError` with ``bad_input``.

A ``qcow2`` recipe may name the registered image it builds on, ``base = "NAME:VERSION"``: it
is then built as a layer on that image's disk (``image_builder.layering``).  TSI settings
beyond the metadata's ``tsi`` group are not part of this format yet.
"""

from __future__ import annotations

import copy
import hashlib
import posixpath
import re
import tomllib
from dataclasses import field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from image_builder.errors import BuildError
from image_repo.errors import BadRequest
from image_repo.schema import NAME_HINT, NAME_PATTERN, Application
from image_repo.strict import document, from_json, join, spec, to_json

MAX_RECIPE_BYTES = 1 << 20
MAX_PACKAGES = 200
MAX_FILES = 200
MAX_USERS = 32
MAX_APPLICATIONS = 64
MAX_FILE_BYTES = 256 << 20
MAX_TOTAL_FILE_BYTES = 1 << 30
#: Users and groups every gridvm guest has; recipe users get their own uid and group.
BASE_USERS = {"root": 0, "gridvm": 1000, "nobody": 65534}
BASE_GROUPS = {"root": 0, "gridvm": 1000, "nogroup": 65534}
#: Guest directories that are mounted over at boot: a file put there would be hidden.
MOUNTED_AT_BOOT = ("/proc", "/sys", "/dev", "/run", "/tmp")
DEBIAN_NAME = r"[a-z0-9][a-z0-9+.-]{0,99}"
UNIX_NAME = r"[a-z_][a-z0-9_-]{0,31}"


def _at_most(limit: int, what: str):
    def problem(items: list[Any]) -> str | None:
        return f"at most {limit} {what}, got {len(items)}" if len(items) > limit else None
    return problem


def _packages_problem(names: list[str]) -> str | None:
    for name in names:
        if not re.fullmatch(DEBIAN_NAME, name):
            return f"{name!r} is not a Debian package name (lowercase letters, digits, + - .)"
    if len(set(names)) != len(names):
        return "a package is listed twice"
    return _at_most(MAX_PACKAGES, "packages")(names)


def _relative_problem(text: str) -> str | None:
    if not text or text.startswith("/") or "\0" in text:
        return f"expected a path relative to the recipe's directory, got {text!r}"
    if ".." in Path(text).parts:
        return f"must stay inside the recipe's directory, got {text!r}"
    return None


def _absolute_problem(text: str) -> str | None:
    if (not text.startswith("/") or posixpath.normpath(text) != text or "\0" in text
            or "\n" in text or len(text) > 1024):
        return f"expected a normalised absolute guest path, got {text!r}"
    return None


def _guest_path_problem(text: str) -> str | None:
    problem = _absolute_problem(text)
    if problem:
        return problem
    if text == "/" or any(text == d or text.startswith(d + "/") for d in MOUNTED_AT_BOOT):
        return f"{text} is hidden by what the guest mounts at boot ({', '.join(MOUNTED_AT_BOOT)})"
    return None


@document
class RecipeFile:
    """A file from the recipe's directory put into the guest."""

    source: str = spec(check=_relative_problem, doc="file, relative to the recipe's directory")
    path: str = spec(check=_guest_path_problem, doc="absolute path in the guest")
    mode: int = spec(0o644, minimum=0, maximum=0o7777, doc="permission bits, e.g. 0o755")
    owner: str = spec("root:root", pattern=rf"{UNIX_NAME}(:{UNIX_NAME})?",
                      hint="user or user:group", doc="owner in the guest")

    @property
    def user(self) -> str:
        return self.owner.partition(":")[0]

    @property
    def group(self) -> str | None:
        return self.owner.partition(":")[2] or None


@document
class RecipeUser:
    """A Unix user of the guest (with a group of the same name and id)."""

    name: str = spec(pattern=UNIX_NAME, hint="a Unix user name", doc="user name")
    uid: int = spec(minimum=1001, maximum=59999, doc="user and group id (1001-59999)")
    groups: list[str] = spec(default_factory=list, doc="further groups (gridvm, or a group "
                             "of another recipe user)")
    home: str | None = spec(None, check=_guest_path_problem,
                            doc="home directory (default /home/NAME)")
    shell: str = spec("/bin/sh", check=_absolute_problem, doc="login shell")

    @property
    def home_directory(self) -> str:
        return self.home or f"/home/{self.name}"


@document
class RecipeApplication:
    """An IDB application: what a job's ApplicationName runs."""

    name: str = spec(doc="ApplicationName in a UNICORE job")
    version: str | None = spec(None, doc="ApplicationVersion (default: the upstream version "
                               "of `package`)")
    package: str | None = spec(None, pattern=DEBIAN_NAME, hint="a Debian package name",
                               doc="Debian package whose version is the application's")
    executable: str | None = spec(None, doc="absolute path of the program in the guest")
    options: list[str] = spec(default_factory=list, doc="default command-line options")
    environment: dict[str, str] = spec(default_factory=dict, doc="environment variables")
    description: str | None = spec(None, doc="free text")

    def idb_entry(self, version: str | None) -> dict[str, Any]:
        """The ``idb.applications`` entry, with ``version`` when none is given."""
        return to_json(Application(
            name=self.name, version=self.version or version, executable=self.executable,
            arguments=list(self.options), environment=dict(self.environment),
            description=self.description))


@document
class Recipe:
    """A whole recipe; ``directory`` (not a key) is where file sources are found."""

    name: str = spec(pattern=NAME_PATTERN, hint=NAME_HINT, doc="image name (general.name)")
    version: str = spec(pattern=r"[0-9A-Za-z][0-9A-Za-z.+~_-]{0,63}",
                        hint="a version like 1.0", doc="the creator's version of the recipe")
    kind: Literal["initramfs", "qcow2", "erofs", "cloud"] = spec(doc="image kind")
    suite: Literal["bookworm"] = spec("bookworm", doc="Debian suite (the build host's)")
    base: str | None = spec(None, pattern=rf"{NAME_PATTERN}:[0-9]{{1,9}}",
                            hint="a registered image as NAME:VERSION, e.g. gridvm-debian12-qcow2:1",
                            doc="the registered qcow2 image this one is a layer on "
                            "(origin.backing_image)")
    packages: list[str] = spec(default_factory=list, check=_packages_problem,
                               doc="extra Debian packages (with their dependencies)")
    files: list[RecipeFile] = spec(default_factory=list, check=_at_most(MAX_FILES, "files"),
                                   doc="files to add")
    users: list[RecipeUser] = spec(default_factory=list, check=_at_most(MAX_USERS, "users"),
                                   doc="users to add")
    applications: list[RecipeApplication] = spec(
        default_factory=list, check=_at_most(MAX_APPLICATIONS, "applications"),
        doc="IDB applications to add")
    metadata: dict[str, Any] = field(default_factory=dict)  # checked by metadata.preview
    directory: Path = field(default=Path("."), init=False)

    def check(self, path: str) -> None:
        if self.base is not None and self.kind != "qcow2":
            raise BadRequest(f"a layer on a base image is of kind qcow2, not {self.kind}",
                             join(path, "base"))
        users, groups = dict(BASE_USERS), dict(BASE_GROUPS)
        if self.kind == "cloud":  # cloud-init makes the job user gridvm at boot
            del users["gridvm"], groups["gridvm"]
        for i, user in enumerate(self.users):
            where = join(join(path, "users"), i)
            if user.name in users or user.name in groups:
                raise BadRequest(f"user {user.name!r} exists already", join(where, "name"))
            if user.uid in users.values() or user.uid in groups.values():
                raise BadRequest(f"uid {user.uid} is taken", join(where, "uid"))
            users[user.name] = groups[user.name] = user.uid
        for i, user in enumerate(self.users):
            for group in user.groups:
                if group not in groups:
                    raise BadRequest(f"no group {group!r} (known: {', '.join(groups)})",
                                     join(join(join(path, "users"), i), "groups"))
        seen: set[str] = set()
        for i, item in enumerate(self.files):
            where = join(join(path, "files"), i)
            if item.path in seen:
                raise BadRequest(f"{item.path} is listed twice", join(where, "path"))
            seen.add(item.path)
            if item.user not in users or (item.group and item.group not in groups):
                raise BadRequest(f"unknown owner {item.owner!r} (users: {', '.join(users)})",
                                 join(where, "owner"))
        self._check_applications(path)

    def _check_applications(self, path: str) -> None:
        names: set[str] = set()
        for i, app in enumerate(self.applications):
            where = join(join(path, "applications"), i)
            try:
                from_json(Application, app.idb_entry(None), where)
            except BadRequest as err:
                raise BadRequest(err.message, _renamed(err.path, "arguments", "options")) \
                    from None
            if app.package is not None and app.package not in self.packages:
                raise BadRequest(f"{app.package!r} is not among the recipe's packages",
                                 join(where, "package"))
            if app.name.lower() in names:
                raise BadRequest(f"{app.name} is listed twice", join(where, "name"))
            names.add(app.name.lower())

    def canonical(self) -> dict[str, Any]:
        """The recipe as a JSON value."""
        doc = to_json(self)
        doc.pop("directory", None)
        doc["metadata"] = copy.deepcopy(self.metadata)
        return doc

    def content_inputs(self) -> dict[str, Any]:
        """What of the recipe goes into the image's files (its cache key): not its version,
        applications or metadata fields, which only the metadata written anew says."""
        doc = self.canonical()
        for key in ("version", "applications", "metadata"):
            doc.pop(key, None)
        doc["sources"] = sources_digest(self)
        return doc

    def source(self, item: RecipeFile) -> Path:
        return self.directory / item.source


def _renamed(path: str | None, old: str, new: str) -> str | None:
    return path.replace(f".{old}", f".{new}") if path else path


def parse_recipe(text: str, directory: Path, *, label: str = "recipe") -> Recipe:
    """Read recipe ``text`` whose file sources lie in ``directory``; ``label`` names it in
    error messages."""
    from image_builder import metadata

    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise BuildError(f"{label}: not valid TOML: {err}", bad_input=True) from None
    overlay = doc.pop("metadata", {})
    try:
        recipe = from_json(Recipe, doc)
        if not isinstance(overlay, dict):
            raise BadRequest("expected a table of metadata groups", "metadata")
        recipe.metadata = overlay
        recipe.directory = Path(directory)
        metadata.preview(recipe)
        _check_sources(recipe)
    except BadRequest as err:
        raise BuildError(f"{label}: {err}", bad_input=True) from None
    return recipe


def load_recipe(path: Path) -> Recipe:
    """Read the recipe file ``path`` (at most 1 MiB)."""
    path = Path(path)
    try:
        with path.open("rb") as stream:
            data = stream.read(MAX_RECIPE_BYTES + 1)
    except OSError as err:
        raise BuildError(f"{path}: {err.strerror}", bad_input=True) from None
    if len(data) > MAX_RECIPE_BYTES:
        raise BuildError(f"{path}: a recipe is at most {MAX_RECIPE_BYTES} bytes",
                         bad_input=True)
    try:
        text = data.decode()
    except UnicodeDecodeError:
        raise BuildError(f"{path}: not UTF-8 text", bad_input=True) from None
    return parse_recipe(text, path.resolve().parent, label=str(path))


def default_recipe(kind: str) -> Recipe:
    """The recipe of gridvm's own guest image of ``kind`` (``image_builder/recipes``)."""
    name = f"debian12-{kind}.toml"
    text = resources.files("image_builder.recipes").joinpath(name).read_text()
    return parse_recipe(text, Path("."), label=name)


def _check_sources(recipe: Recipe) -> None:
    """Every source a regular file inside the recipe's directory; sizes bounded."""
    root = recipe.directory.resolve()
    total = 0
    for i, item in enumerate(recipe.files):
        where = join(join("files", i), "source")
        source = (root / item.source).resolve()
        if not source.is_relative_to(root):
            raise BadRequest(f"{item.source} leads outside the recipe's directory", where)
        if not source.is_file():
            raise BadRequest(f"{item.source}: no such file in {root}", where)
        size = source.stat().st_size
        if size > MAX_FILE_BYTES:
            raise BadRequest(f"{item.source} has {size} bytes, at most {MAX_FILE_BYTES}", where)
        total += size
        if total > MAX_TOTAL_FILE_BYTES:
            raise BadRequest(f"the files add up to more than {MAX_TOTAL_FILE_BYTES} bytes",
                             where)


def sources_digest(recipe: Recipe) -> str:
    """sha256 over the recipe's file sources (their content is part of the cache key)."""
    digest = hashlib.sha256()
    for item in recipe.files:
        digest.update(item.source.encode() + b"\0")
        with recipe.source(item).open("rb") as stream:
            while chunk := stream.read(1 << 20):
                digest.update(chunk)
        digest.update(b"\0")
    return digest.hexdigest()
