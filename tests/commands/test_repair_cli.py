"""Repair: missing or damaged images restored by the same ``isic2020 fetch``.

Without the archive (``--no-keep-archives``, or removed by ``clean --archives``) only the
missing or damaged members' byte ranges are fetched from the remote zip (counted at the
server); a server without byte ranges ends in one line naming the commands that fetch the whole
archive instead (exit 3); a stray file never hides a missing image; ``verify`` names the fetch
that repairs. A real process against a real server on 127.0.0.1 serving the synthetic dataset.
"""

from __future__ import annotations

import shlex
import zipfile
from pathlib import Path

from support.cli import cli_env, run_cli
from support.fixtures import served_dataset
from support.servers import FaultServer, IgnoreRange
from support.snapshot import changed, snapshot

ZIP = "ISIC_2020_Training_JPEG.zip"
ARGS = ("--split", "train", "--format", "jpeg")


dataset, mirror = served_dataset("synthetic", n_train=24, n_test=6, formats=("jpeg",))


def _fetch(data: Path, srv: FaultServer, dataset, *extra: str):
    return run_cli("fetch", "--data-dir", str(data), "--mirror", srv.url, *ARGS, "--json",
                   *extra, env=cli_env(dataset.manifest_path))


def _members(dataset) -> dict[str, tuple[int, int, int]]:
    """Image file name -> (span start, span end, compressed size) in the served zip."""
    with zipfile.ZipFile(dataset.path(ZIP)) as zf:
        infos = sorted(zf.infolist(), key=lambda i: i.header_offset)
        with open(dataset.path(ZIP), "rb") as fh:
            fh.seek(-22, 2)
            cd_offset = int.from_bytes(fh.read(22)[16:20], "little")
    out = {}
    for i, info in enumerate(infos):
        end = infos[i + 1].header_offset if i + 1 < len(infos) else cd_offset
        out[info.filename.rsplit("/", 1)[-1]] = (info.header_offset, end, info.compress_size)
    return out


def _damage(folder: Path, names: list[str]) -> list[str]:
    """Delete the first three images, truncate the fourth (what verify finds: another size
    than the zip's, no JPEG end marker); their file names."""
    victims = [f"{n}.jpg" for n in names[:4]]
    for v in victims[:3]:
        (folder / v).unlink()
    path = folder / victims[3]
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return sorted(victims)


def _original(dataset, name: str) -> bytes:
    with zipfile.ZipFile(dataset.path(ZIP)) as zf:
        (info,) = [i for i in zf.infolist() if i.filename.endswith("/" + name)
                   or i.filename == name]
        return zf.read(info)


def _check_repaired_by_ranges(data: Path, mirror: FaultServer, dataset, victims: list[str]):
    spans = _members(dataset)
    wanted = sum(spans[v][1] - spans[v][0] for v in victims)
    mirror.reset_counters()
    dry = _fetch(data, mirror, dataset, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    (row,) = [r for r in dry.json["dry_run"] if r["name"] == ZIP]
    assert row["repair"] == victims and row["to_transfer"] == wanted
    assert mirror.requests(ZIP) == []  # judged from the saved directory alone
    mirror.reset_counters()
    r = _fetch(data, mirror, dataset)
    assert r.returncode == 0, r.stderr
    (entry,) = [f for f in r.json["files"] if f["name"] == ZIP]
    assert entry["extraction"]["repaired"] == 4
    assert entry["extraction"]["repaired_images"] == victims
    assert r.json["repaired"] == 4
    # only those members' byte ranges: no archive, no directory (it was saved when unpacked)
    sent = mirror.bytes_sent(ZIP)
    assert sum(spans[v][2] for v in victims) <= sent <= wanted * 1.05
    assert entry["bytes_transferred"] == sent == r.json["bytes_transferred"]
    gets = mirror.requests(ZIP, "GET")
    assert gets and len(gets) <= 4 and all("Range" in g.headers for g in gets)
    folder = data / "jpeg" / "train"
    for v in victims:
        assert (folder / v).read_bytes() == _original(dataset, v)
    v = run_cli("verify", "--data-dir", str(data), *ARGS, env=cli_env(dataset.manifest_path))
    assert v.returncode == 0, v.stdout + v.stderr
    # and a second re-run costs nothing at all
    mirror.reset_counters()
    again = _fetch(data, mirror, dataset)
    assert again.returncode == 0, again.stderr
    assert again.json["bytes_transferred"] == 0 and mirror.requests(ZIP) == []


def test_fetch_repairs_missing_and_damaged_images_without_the_archive(dataset, mirror,
                                                                      tmp_path):
    """After ``fetch --no-keep-archives``: 3 images deleted, 1 truncated; the same fetch
    fetches exactly those 4 members by their byte ranges, exit 0, and verify passes."""
    data = tmp_path / "data"
    assert _fetch(data, mirror, dataset, "--no-keep-archives").returncode == 0
    assert not (data / "archives" / ZIP).exists()
    victims = _damage(data / "jpeg" / "train", dataset.train_names)
    _check_repaired_by_ranges(data, mirror, dataset, victims)


def test_a_dry_run_over_a_complete_folder_writes_nothing(dataset, mirror, tmp_path):
    """The dry run judges the images from the saved directory as the fetch would, and like
    every dry run writes nothing: not even the memo a fetch leaves for a complete folder."""
    data = tmp_path / "data"
    assert _fetch(data, mirror, dataset, "--no-keep-archives").returncode == 0
    before = snapshot(data)
    dry = _fetch(data, mirror, dataset, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    (row,) = [r for r in dry.json["dry_run"] if r["name"] == ZIP]
    assert row["repair"] == [] and row["to_transfer"] == 0
    assert changed(before, snapshot(data)) == []


def test_fetch_repairs_images_after_clean_archives(dataset, mirror, tmp_path):
    """The archive kept, then removed by ``clean --archives``: the same repair by ranges."""
    data = tmp_path / "data"
    assert _fetch(data, mirror, dataset).returncode == 0
    env = cli_env(dataset.manifest_path)
    c = run_cli("clean", "--data-dir", str(data), "--archives", env=env)
    assert c.returncode == 0, c.stderr
    assert not (data / "archives" / ZIP).exists()
    victims = _damage(data / "jpeg" / "train", dataset.train_names)
    _check_repaired_by_ranges(data, mirror, dataset, victims)


def test_a_stray_file_does_not_hide_a_missing_image(dataset, mirror, tmp_path):
    """One image deleted and a stray file put in its place (the count is the same): fetch
    restores the missing one by its range; the stray one stays and is reported (exit 1, as
    verify's rule for an extra file is)."""
    data = tmp_path / "data"
    assert _fetch(data, mirror, dataset, "--no-keep-archives").returncode == 0
    folder = data / "jpeg" / "train"
    victim = folder / f"{dataset.train_names[0]}.jpg"
    victim.unlink()
    stray = folder / "ISIC_9999999.jpg"
    stray.write_bytes(b"\xff\xd8stray\xff\xd9")
    r = _fetch(data, mirror, dataset)
    assert r.returncode == 1, r.stderr
    assert victim.read_bytes() == _original(dataset, victim.name)
    assert stray.exists()
    names = [c for c in r.json["verification"]["checks"] if c["name"].endswith("/names")]
    assert names[0]["figures"]["extra_names"] == ["ISIC_9999999.jpg"]
    assert names[0]["figures"]["missing"] == 0
    (line,) = r.error_lines
    assert "extra files" in line


def test_extract_judges_already_extracted_by_names_not_by_count(dataset, mirror, tmp_path):
    """With the archive kept: an image deleted and a stray file added; ``extract`` must not say
    "already extracted" because the count is right: it restores the missing image."""
    data = tmp_path / "data"
    assert _fetch(data, mirror, dataset).returncode == 0
    folder = data / "jpeg" / "train"
    victim = folder / f"{dataset.train_names[1]}.jpg"
    victim.unlink()
    (folder / "ISIC_9999998.jpg").write_bytes(b"\xff\xd8stray\xff\xd9")
    r = run_cli("extract", "--data-dir", str(data), *ARGS, "--json",
                env=cli_env(dataset.manifest_path))
    assert r.returncode == 0, r.stderr
    assert victim.read_bytes() == _original(dataset, victim.name)
    assert (folder / "ISIC_9999998.jpg").exists()


def test_repair_from_a_server_without_ranges_is_one_line_exit_3(dataset, mirror, tmp_path):
    """A server that answers ranged GETs with the whole body: one line that says so and gives
    the commands that download the whole archive and unpack it; they work as written."""
    data = tmp_path / "data"
    assert _fetch(data, mirror, dataset, "--no-keep-archives").returncode == 0
    victim = data / "jpeg" / "train" / f"{dataset.train_names[2]}.jpg"
    victim.unlink()
    mirror.add_fault(IgnoreRange(), ZIP, times=None)
    env = cli_env(dataset.manifest_path)
    r = run_cli("fetch", "--data-dir", str(data), "--mirror", mirror.url, *ARGS,
                "--no-keep-archives", env=env)
    assert r.returncode == 3, r.stderr
    (line,) = r.error_lines
    assert "byte ranges" in line and "1 missing or damaged image" in line
    commands = line.split("`")[1].split(" && ")
    assert commands[0].startswith("isic2020 fetch ") and "--no-extract" in commands[0]
    for cmd in commands:
        argv = shlex.split(cmd)
        done = run_cli(*argv[1:], env=env)
        assert done.returncode == 0, done.stderr
    assert victim.read_bytes() == _original(dataset, victim.name)


def test_verify_names_the_fetch_that_repairs(dataset, mirror, tmp_path):
    """``verify`` of a folder missing an image says which fetch restores it, exactly."""
    data = tmp_path / "data"
    assert _fetch(data, mirror, dataset, "--no-keep-archives").returncode == 0
    (data / "jpeg" / "train" / f"{dataset.train_names[3]}.jpg").unlink()
    env = cli_env(dataset.manifest_path)
    v = run_cli("verify", "--data-dir", str(data), *ARGS, "--json", env=env)
    assert v.returncode == 1
    want = f"isic2020 fetch --split train --format jpeg --data-dir {data}"
    assert v.json["repair"] == want
    (line,) = v.error_lines
    assert f"`{want}`" in line
    # it is the command that repairs (the mirror is where this test's data comes from)
    fixed = run_cli(*shlex.split(want)[1:], "--mirror", mirror.url, env=env)
    assert fixed.returncode == 0, fixed.stderr


def test_without_a_saved_directory_the_remote_one_is_read_once(dataset, mirror, tmp_path):
    """A data directory unpacked by an older version has no saved directory: the remote zip's
    is read (once), the missing image restored, and the next re-run asks the server nothing."""
    data = tmp_path / "data"
    assert _fetch(data, mirror, dataset, "--no-keep-archives").returncode == 0
    saved = data / ".isic2020" / "directories" / f"{ZIP}.json.gz"
    assert saved.is_file()
    saved.unlink()
    victim = data / "jpeg" / "train" / f"{dataset.train_names[5]}.jpg"
    victim.unlink()
    r = _fetch(data, mirror, dataset)
    assert r.returncode == 0, r.stderr
    assert r.json["repaired"] == 1
    assert victim.read_bytes() == _original(dataset, victim.name)
    assert saved.is_file()
    mirror.reset_counters()
    again = _fetch(data, mirror, dataset)
    assert again.returncode == 0, again.stderr
    assert mirror.requests(ZIP) == []
