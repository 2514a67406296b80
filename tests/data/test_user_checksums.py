"""`xaibench download imagenet-val --checksums FILE`: archives the user verified by other means are
checked against the user's sha256 instead of the published checksums, and dataset.json says so."""

import hashlib
import json

from synthetic_imagenet import devkit_tar, val_tar

from xaibench.data.archives import ChecksumError

GROUND_TRUTH = [1, 2, 3, 1, 500, 1000]


def repacked(tmp_path):
    """A devkit and an image archive under the real names, whose checksums are not the published."""
    folder = tmp_path / "mirror"
    folder.mkdir()
    return [
        val_tar(folder / "ILSVRC2012_img_val.tar", len(GROUND_TRUTH)),
        devkit_tar(folder / "ILSVRC2012_devkit_t12.tar.gz", GROUND_TRUTH),
    ]


def sha256sum(paths, out):
    lines = [f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.name}\n" for p in paths]
    out.write_text("# made with sha256sum\n" + "".join(lines))
    return out


def download(invoke, dest, archives, *extra):
    arguments = ["download", "imagenet-val", "--dest", dest, "--quiet", *extra]
    for path in archives:
        arguments += ["--archive", path]
    return invoke(*arguments, catch_exceptions=True)


def test_archives_pass_against_the_users_checksums_recorded_as_such(tmp_path, invoke):
    archives = repacked(tmp_path)
    refused = download(invoke, tmp_path / "d", archives)
    assert isinstance(refused.exception, ChecksumError)  # the published checksums do not match

    checksums = sha256sum(archives, tmp_path / "SHA256SUMS")
    result = download(invoke, tmp_path / "d", archives, "--checksums", checksums)
    assert result.exit_code == 0, result.output
    assert "imagenet-val: 6 images" in result.output
    info = json.loads((tmp_path / "d" / "dataset.json").read_text())
    assert info["user_checksums"] == {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in archives
    }


def test_an_archive_that_differs_from_the_users_checksum_is_refused(tmp_path, invoke):
    archives = repacked(tmp_path)
    checksums = tmp_path / "SHA256SUMS"
    checksums.write_text("".join(f"{'0' * 64}  {p.name}\n" for p in archives))
    result = download(invoke, tmp_path / "d", archives, "--checksums", checksums)
    assert isinstance(result.exception, ChecksumError)
    assert f"expected sha256 {'0' * 64}" in str(result.exception)


def test_a_malformed_checksum_file_names_its_line(tmp_path, invoke):
    checksums = tmp_path / "SHA256SUMS"
    checksums.write_text("\nnot a checksum line\n")
    result = download(invoke, tmp_path / "d", repacked(tmp_path), "--checksums", checksums)
    assert result.exit_code == 2 and f"{checksums}:2" in result.output
    assert "--checksums" in result.output


def test_a_checksum_for_another_file_is_refused(tmp_path, invoke):
    checksums = tmp_path / "SHA256SUMS"
    checksums.write_text(f"{'a' * 64}  imagenet.tar\n")
    result = download(invoke, tmp_path / "d", repacked(tmp_path), "--checksums", checksums)
    assert "imagenet.tar, which is not one of ILSVRC2012_img_val.tar" in str(result.exception)
