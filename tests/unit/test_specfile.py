"""VM spec files: TOML parsing, validation errors that name the field, round trips,
and the argv they produce (pure: no QEMU)."""

from pathlib import Path

import pytest

from livemig.errors import SpecError
from livemig.qemu.argv import InstancePaths, build_argv
from livemig.spec import Disk, Nic, VMSpec
from livemig.specfile import parse_spec, spec_to_toml


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    for name in ("vmlinuz", "initrd", "a.raw", "b.qcow2"):
        (tmp_path / name).write_bytes(b"x")
    return {
        k: str(tmp_path / n) for k, n in (("k", "vmlinuz"), ("i", "initrd"), ("a", "a.raw"), ("b", "b.qcow2"))
    }


def full(env: dict[str, str]) -> str:
    return f'''
name = "web"
memory = "512M"
vcpus = 2
accel = "tcg"
extra_args = ["-rtc", "base=utc"]

[boot]
kernel = "{env["k"]}"
initrd = "{env["i"]}"
cmdline = "livemig.diskbeat=vda"

[[disk]]
path = "{env["a"]}"
cache = "none"

[[disk]]
path = "{env["b"]}"
format = "qcow2"
readonly = true
cache = "writeback"

[[nic]]
network = "bridge:lmbr0"
mac = "52:54:00:AA:00:01"
ip = "198.51.100.10/24"

[[nic]]
model = "e1000"

[serial]
heartbeat = true
'''


def test_a_full_spec_parses_validates_and_round_trips(env: dict[str, str]) -> None:
    spec = parse_spec(full(env)).validated()
    assert spec.memory_mib == 512 and spec.vcpus == 2
    assert spec.disks == (Disk(Path(env["a"])), Disk(Path(env["b"]), "qcow2", True, "writeback"))
    assert spec.nics[0].mac == "52:54:00:aa:00:01" and spec.nics[0].address == "198.51.100.10"
    assert spec.nics[1].mac is not None and spec.nics[1].mac.startswith("52:54:00:")  # derived
    assert parse_spec(spec_to_toml(spec)).validated() == spec
    assert VMSpec.from_dict(spec.to_dict()) == spec  # the record's JSON form too
    assert "livemig.net=eth0:198.51.100.10/24" in spec.kernel_cmdline


def test_the_derived_mac_is_stable_and_differs_per_nic(env: dict[str, str]) -> None:
    text = f'name = "a"\n[boot]\nkernel = "{env["k"]}"\ninitrd = "{env["i"]}"\n[[nic]]\n[[nic]]\n'
    one, two = parse_spec(text).validated(), parse_spec(text).validated()
    assert one.nics == two.nics and one.nics[0].mac != one.nics[1].mac


def test_argv_has_disks_nics_and_extra_args_as_a_list(env: dict[str, str], tmp_path: Path) -> None:
    spec = parse_spec(full(env)).validated()
    argv = build_argv(Path("/q"), spec, "tcg", InstancePaths(tmp_path), incoming=True, instance_id="abcd1234")
    joined = " ".join(argv)
    assert f"file={env['a']},format=raw,if=none,id=disk0,cache=none" in joined
    assert f"file={env['b']},format=qcow2,if=none,id=disk1,cache=writeback,readonly=on" in joined
    assert "tap,id=net0,ifname=lmtabcd1234n0,script=no,downscript=no" in joined
    assert "virtio-net-pci,netdev=net0,mac=52:54:00:aa:00:01,id=nic0" in joined
    assert "user,id=net1" in joined and "e1000,netdev=net1" in joined
    assert argv[-4:] == ["-rtc", "base=utc", "-incoming", "defer"]


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"disk_path": "/nonexistent/disk.raw"}, "disk[0].path"),
        ({"disk_extra": 'cache = "fast"'}, "disk[0].cache"),
        ({"disk_extra": 'format = "vmdk"'}, "disk[0].format"),
        ({"disk_extra": "readonly = 1"}, "disk[0].readonly"),
        ({"disk_extra": "size = 1"}, "disk[0].size"),
        ({"nic_extra": 'model = "virtio-net"'}, "nic[0].model"),
        ({"nic_extra": 'network = "bridge:a bridge"'}, "nic[0].network"),
        ({"nic_extra": 'mac = "52:54:00:00:00:01"', "nic2": 'mac = "52:54:00:00:00:01"'}, "nic[1].mac"),
        ({"nic_extra": 'mac = "01:00:5e:00:00:01"'}, "nic[0].mac"),
        ({"nic_extra": 'mac = "nonsense"'}, "nic[0].mac"),
        ({"nic_extra": 'network = "vde"'}, "nic[0].network"),
        ({"nic_extra": 'network = "user"\nip = "198.51.100.9/24"'}, "nic[0].ip"),
        ({"nic_extra": 'network = "bridge:b"\nip = "198.51.100.9"'}, "nic[0].ip"),
        ({"top": 'extra_args = ["-incoming", "defer"]'}, "extra_args[0]"),
        ({"top": 'extra_args = ["-netdev", "tap,id=x,fd=3"]'}, "extra_args[1]"),
        ({"top": 'extra_args = "-rtc base=utc"'}, "extra_args"),
        ({"top": "colour = 1"}, "colour"),
        ({"top": 'machine = "virt"'}, "machine"),
        ({"boot_extra": 'firmware = "bios"'}, "boot.firmware"),
    ],
)
def test_invalid_specs_name_the_field(env: dict[str, str], patch: dict[str, str], field: str) -> None:
    text = "\n".join([
        'name = "vm"', patch.get("top", ""),
        "[boot]", f'kernel = "{env["k"]}"', f'initrd = "{env["i"]}"', patch.get("boot_extra", ""),
        "[[disk]]", f'path = "{patch.get("disk_path", env["a"])}"', patch.get("disk_extra", ""),
        "[[nic]]", patch.get("nic_extra", ""),
        "[[nic]]", patch.get("nic2", ""),
    ])  # fmt: skip
    with pytest.raises(SpecError) as info:
        parse_spec(text).validated()
    assert info.value.field == field, str(info.value)
    assert str(info.value).startswith(field) and "\n" not in str(info.value)


def test_bad_toml_is_one_line_naming_the_file_and_position() -> None:
    with pytest.raises(SpecError) as info:
        parse_spec('name = "vm"\nmemory = = 3\n', "vm.toml")
    assert info.value.field == "vm.toml" and "line 2" in str(info.value) and "\n" not in str(info.value)


def test_a_missing_name_and_a_duplicate_disk_are_named(env: dict[str, str]) -> None:
    with pytest.raises(SpecError, match=r"^name: is required"):
        parse_spec("memory = 256\n")
    spec = VMSpec("vm", kernel=Path(env["k"]), initrd=Path(env["i"]), disks=(Disk(Path(env["a"])),) * 2)
    with pytest.raises(SpecError) as info:
        spec.validated()
    assert info.value.field == "disk[1].path"


def test_firmware_boot_needs_a_disk_and_excludes_a_kernel(env: dict[str, str]) -> None:
    spec = VMSpec("vm", firmware="bios", disks=(Disk(Path(env["a"])),)).validated()
    argv = build_argv(Path("/q"), spec, "tcg", InstancePaths(Path("/r")), incoming=False)
    assert "-kernel" not in argv and any("bootindex=0" in a for a in argv)
    with pytest.raises(SpecError, match=r"^boot\.firmware: give either"):
        VMSpec("vm", firmware="bios", kernel=Path(env["k"]), disks=(Disk(Path(env["a"])),)).validated()


def test_nic_helpers() -> None:
    assert Nic("bridge:lmbr0").bridge == "lmbr0" and Nic().bridge is None
