"""Busy polling is off where a cgroup's CPU quota leaves less than two cores (docker run
--cpus 1, a Kubernetes CPU limit): read from the kernel's own files, both cgroup versions."""
from clipper.busy_poll import cgroup_cpu_quota


def layout(tmp_path, membership, files):
    (tmp_path / "cgroup").write_text(membership)
    for name, text in files.items():
        path = tmp_path / "fs" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return dict(root=tmp_path / "fs", membership=tmp_path / "cgroup")


def test_cgroup_v2_quota(tmp_path):
    assert cgroup_cpu_quota(**layout(tmp_path, "0::/docker/abc\n", {"docker/abc/cpu.max": "100000 100000\n"})) == 1.0
    assert cgroup_cpu_quota(**layout(tmp_path, "0::/\n", {"cpu.max": "max 100000\n"})) is None


def test_cgroup_v1_quota(tmp_path):
    files = {"cpu,cpuacct/kubepods/x/cpu.cfs_quota_us": "150000\n",
             "cpu,cpuacct/kubepods/x/cpu.cfs_period_us": "100000\n"}
    assert cgroup_cpu_quota(**layout(tmp_path, "4:memory:/kubepods/x\n3:cpu,cpuacct:/kubepods/x\n", files)) == 1.5
    unlimited = {"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}
    assert cgroup_cpu_quota(**layout(tmp_path, "1:cpu:/\n", unlimited)) is None


def test_unreadable_or_odd_files_mean_no_quota(tmp_path):
    assert cgroup_cpu_quota(root=tmp_path, membership=tmp_path / "missing") is None
    assert cgroup_cpu_quota(**layout(tmp_path, "0::/\n", {"cpu.max": "garbage\n"})) is None
    assert cgroup_cpu_quota(**layout(tmp_path, "0::/a\n", {})) is None


def test_a_container_without_its_own_cgroup_namespace_reads_the_mounts_root(tmp_path):
    """Docker on cgroup v1: /proc/self/cgroup names the host's path, the group is mounted at the root."""
    files = {"cpu/cpu.cfs_quota_us": "100000\n", "cpu/cpu.cfs_period_us": "100000\n"}
    assert cgroup_cpu_quota(**layout(tmp_path, "1:cpu:/docker/0123abcd\n", files)) == 1.0


def test_a_quota_on_a_group_above_binds(tmp_path):
    """A systemd slice or a pod limits every group under it."""
    files = {"kubepods/pod1/cpu.max": "200000 100000\n", "kubepods/pod1/c1/cpu.max": "max 100000\n",
             "kubepods/cpu.max": "max 100000\n"}
    assert cgroup_cpu_quota(**layout(tmp_path, "0::/kubepods/pod1/c1\n", files)) == 2.0
    files["kubepods/pod1/c1/cpu.max"] = "50000 100000\n"        # the tighter one wins
    assert cgroup_cpu_quota(**layout(tmp_path, "0::/kubepods/pod1/c1\n", files)) == 0.5
