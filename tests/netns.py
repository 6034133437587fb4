"""Hosts made of Linux network namespaces, for tests that cut one worker host off the network.

A :func:`network` is a Linux bridge in the root namespace with a private test subnet
(``10.231.N.0/24``, N picked so no address on this machine is in it yet). Each
:meth:`Network.host` is a network namespace joined to the bridge by a veth pair: its
own address, loopback up, and the bridge address (where the test's Redis and API
listen) as its only neighbour. Nothing is routed anywhere else: the namespaces have no
default route, and the subnet stays on the bridge even while a host is cut off, so no
packet for it ever leaves through a real interface.

:meth:`Host.cut` sets the root-side end of the host's veth down: the host's packets are
dropped and nothing reaches it, silently, as when its switch port dies. Every name has a
random suffix, so test runs on one machine never share a device; everything is removed
on exit, also when the test fails. Needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN) and iproute2;
:func:`unavailable` says why not when they are missing.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import os
import random
import shutil
import signal
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

TEST_RANGE = ipaddress.IPv4Network("10.231.0.0/16")  # private; only ever assigned to devices made here
LOCK_FILE = "/run/lock/orchestrator-test-netns.lock"  # subnet choice is serialized between test runs


class NetnsError(RuntimeError):
    """An ``ip`` command failed; the message has the command and what it printed."""


def ip(*args: str, check: bool = True) -> str:
    """Run ``ip ARGS``; its output, or NetnsError (with stderr) when it fails and ``check``."""
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise NetnsError(f"`ip {' '.join(args)}` failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def unavailable() -> str | None:
    """Why namespace hosts cannot be made here (not root, no iproute2, no CAP_NET_ADMIN), or None."""
    if os.geteuid() != 0:
        return "network namespace hosts need root (ip netns add, veth, bridge)"
    if shutil.which("ip") is None:
        return "network namespace hosts need iproute2 (the `ip` command)"
    probe = f"orcprobe-{uuid.uuid4().hex[:8]}"
    try:
        ip("netns", "add", probe)
    except NetnsError as exc:
        return f"cannot create a network namespace here (no CAP_NET_ADMIN/CAP_SYS_ADMIN?): {exc}"
    finally:
        ip("netns", "del", probe, check=False)
    return None


@dataclass
class Host:
    """One worker host: a network namespace with one address on the test network."""

    label: str
    namespace: str
    address: str  # the host's own address
    root_link: str  # the veth end on the bridge (root namespace): down = host cut off

    @property
    def exec_prefix(self) -> list[str]:
        """Prefix that runs a command on this host: ``[*exec_prefix, "python", ...]``."""
        return ["ip", "netns", "exec", self.namespace]

    def cut(self) -> None:
        """Cut the host off: its link to the bridge goes down, every packet to or from it is dropped."""
        ip("link", "set", self.root_link, "down")

    def heal(self) -> None:
        """Join the host to the network again."""
        ip("link", "set", self.root_link, "up")

    def pids(self) -> list[int]:
        """Processes running in the host's namespace."""
        return [int(p) for p in ip("netns", "pids", self.namespace, check=False).split()]


@dataclass
class Network:
    """A bridge with a private /24; hosts get .2, .3, ... and the root namespace has .1."""

    suffix: str
    bridge: str
    subnet: ipaddress.IPv4Network
    gateway: str  # the root namespace's address on the bridge: servers bind it
    hosts: list[Host] = field(default_factory=list)

    @contextlib.contextmanager
    def host(self, label: str) -> Iterator[Host]:
        """A namespace joined to the bridge; its processes are killed and it is removed on exit."""
        if not label.isalnum() or len(label) > 3:
            raise ValueError(f"host label {label!r}: use 1-3 letters or digits (device names are short)")
        address = str(self.subnet.network_address + 2 + len(self.hosts))
        made = Host(label, f"orc-{self.suffix}-{label}", address, f"orc{self.suffix}{label}r")
        inner = f"orc{self.suffix}{label}n"
        self.hosts.append(made)
        try:
            ip("netns", "add", made.namespace)
            ip("link", "add", made.root_link, "type", "veth", "peer", "name", inner)
            ip("link", "set", inner, "netns", made.namespace)
            ip("link", "set", made.root_link, "master", self.bridge)
            ip("link", "set", made.root_link, "up")
            ip("-n", made.namespace, "link", "set", "lo", "up")
            ip("-n", made.namespace, "addr", "add", f"{address}/{self.subnet.prefixlen}", "dev", inner)
            ip("-n", made.namespace, "link", "set", inner, "up")
            yield made
        finally:
            for pid in made.pids():  # only processes this test started can live in its namespace
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            ip("link", "del", made.root_link, check=False)  # takes the namespace's end with it
            ip("netns", "del", made.namespace, check=False)


@contextlib.contextmanager
def network() -> Iterator[Network]:
    """A bridge on a free ``10.231.N.0/24`` of the test range; removed with its hosts on exit."""
    suffix = uuid.uuid4().hex[:6]
    bridge = f"orcbr{suffix}"
    made = False
    try:
        with open(LOCK_FILE, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # two runs never pick the same subnet
            subnet = _free_subnet()
            ip("link", "add", bridge, "type", "bridge")
            made = True
            gateway = str(subnet.network_address + 1)
            ip("addr", "add", f"{gateway}/{subnet.prefixlen}", "dev", bridge)
        ip("link", "set", bridge, "up")
        yield Network(suffix, bridge, subnet, gateway)
    finally:
        if made:
            ip("link", "del", bridge, check=False)


def _free_subnet() -> ipaddress.IPv4Network:
    """A /24 of the test range that no address or route on this machine is in yet."""
    words = ip("-4", "-o", "addr", "show").split()
    in_use = [ipaddress.ip_interface(words[i + 1]).network for i, word in enumerate(words[:-1]) if word == "inet"]
    routes = ip("-4", "route", "show", "table", "all")
    candidates = list(TEST_RANGE.subnets(new_prefix=24))
    random.shuffle(candidates)
    for subnet in candidates:
        if not any(subnet.overlaps(net) for net in in_use) and f"{subnet.network_address}/" not in routes:
            return subnet
    raise NetnsError(f"no free /24 left in {TEST_RANGE} (leftovers of earlier runs? see `ip -4 addr`)")
