"""Residency: the newest values of a buffer are found wherever they are (host or any number of
device copies), copied only when stale, and C routines stay coherent with devices both ways. The
devices here are simulated by numpy arrays behind the same `Place` protocol as CUDA's copies."""

from __future__ import annotations

import gc
import weakref

import numpy as np

from arrayjit.assignments import Accum
from arrayjit.indexing import identity_projections
from arrayjit.runtime import residency
from arrayjit.runtime.residency import HOST, Residency
from arrayjit.tnode import TNode


class FakeCopy:
    """A buffer on a simulated device: a place of its tnode's residency."""

    def __init__(self, tnode: TNode) -> None:
        self.values = np.zeros(tnode.dims, tnode.dtype.numpy)
        self.fetches = 0
        self.uploads = 0
        state = residency.of(tnode)
        state.add_place(self, holds_newest=state.latest == 0 and not tnode.has_host)

    def fetch(self, host: np.ndarray) -> None:
        self.fetches += 1
        np.copyto(host, self.values)


class FakeDevice:
    """Runs `out = f(x)` on its copies, uploading stale inputs first, as the CUDA backend does."""

    def __init__(self) -> None:
        self.copies: dict[TNode, FakeCopy] = {}

    def copy(self, tnode: TNode) -> FakeCopy:
        if tnode not in self.copies:
            self.copies[tnode] = FakeCopy(tnode)
        return self.copies[tnode]

    def run(self, f, out: TNode, *inputs: TNode) -> None:
        for t in (*inputs, out):
            copy = self.copy(t)
            if not residency.of(t).is_current(copy):
                copy.values[...] = t.host()
                copy.uploads += 1
                residency.of(t).copied_to(copy)
        self.copy(out).values[...] = f(*(self.copy(t).values for t in inputs))
        residency.of(out).write_at(self.copy(out))


def pointwise(lhs: TNode, op: str, *rhses: TNode) -> Accum:
    return Accum(lhs, None, op, rhses, identity_projections(lhs.dims, len(rhses)))


def test_host_write_makes_device_copies_stale_and_one_upload_refreshes_them():
    x, y = TNode("x", (5,)), TNode("y", (5,))
    device = FakeDevice()
    x.set_host(np.arange(5.0))
    device.run(np.negative, y, x)
    device.run(np.negative, y, x)
    assert device.copy(x).uploads == 1
    x.set_host(np.ones(5))
    device.run(np.negative, y, x)
    assert device.copy(x).uploads == 2
    np.testing.assert_array_equal(y.host(), -np.ones(5))


def test_values_written_on_a_device_come_back_once_when_read():
    x, y = TNode("x", (4,)), TNode("y", (4,))
    device = FakeDevice()
    x.set_host([1.0, 2.0, 3.0, 4.0])
    device.run(np.sqrt, y, x)
    assert not residency.of(y).is_current(HOST) and device.copy(y).fetches == 0
    np.testing.assert_allclose(y.host(), np.sqrt([1.0, 2.0, 3.0, 4.0]))
    y.host()
    assert device.copy(y).fetches == 1
    assert residency.computed(y)


def test_a_fresh_device_copy_of_a_never_written_buffer_needs_no_upload():
    x, y = TNode("x", (3,)), TNode("y", (3,))
    device = FakeDevice()
    device.run(np.exp, y, x)  # x was never written: its zeros are its values everywhere
    assert device.copy(x).uploads == 0
    np.testing.assert_array_equal(y.host(), np.ones(3))
    assert not residency.computed(x)


def test_set_host_after_a_device_write_wins_without_a_fetch():
    x, y = TNode("x", (3,)), TNode("y", (3,))
    device = FakeDevice()
    device.run(np.exp, y, x)
    y.set_host([7.0, 8.0, 9.0])
    np.testing.assert_array_equal(y.host(), [7.0, 8.0, 9.0])
    assert device.copy(y).fetches == 0
    assert not residency.of(y).is_current(device.copy(y))


def test_n_devices_see_each_others_writes():
    """Device k doubles what device k-1 wrote: each reads the newest values through the host."""
    devices = [FakeDevice() for _ in range(4)]
    a, b = TNode("a", (6,)), TNode("b", (6,))
    a.set_host(np.arange(6.0))
    for k, device in enumerate(devices):
        src, dst = (a, b) if k % 2 == 0 else (b, a)
        device.run(lambda v: 2 * v, dst, src)
    np.testing.assert_array_equal(a.host(), 16 * np.arange(6.0))
    # The newest b was written by device 2 and fetched once, by device 3's upload.
    assert devices[2].copy(b).fetches == 1
    state = residency.of(a)
    assert state.current_places() == [HOST, devices[3].copy(a)]


def test_c_routines_and_devices_stay_coherent_both_ways(c_context):
    n = 8
    x, y, z = TNode("x", (n,)), TNode("y", (n,)), TNode("z", (n,))
    device = FakeDevice()
    on_cpu = c_context.compile(pointwise(z, "neg", y))
    values = np.linspace(-1, 1, n)
    x.set_host(values)
    device.run(lambda v: 3 * v, y, x)  # y = 3x on the device
    on_cpu.run()  # z = -y on the host: fetches y from the device first
    np.testing.assert_allclose(z.host(), -3 * values.astype(np.float32), rtol=1e-6)
    assert device.copy(y).fetches == 1
    on_cpu.run()
    assert device.copy(y).fetches == 1  # nothing changed on the device: no second fetch
    device.run(lambda v: v + 1, x, z)  # the device reads the z that C wrote
    np.testing.assert_allclose(x.host(), 1 - 3 * values.astype(np.float32), rtol=1e-6)
    assert device.copy(z).uploads == 1


def test_a_c_write_makes_the_device_copy_stale(c_context):
    x, y = TNode("x", (4,)), TNode("y", (4,))
    device = FakeDevice()
    device.run(np.exp, y, x)  # y now has a device copy
    c_context.compile(pointwise(y, "add", x, x)).run()
    assert residency.of(y).current_places() == [HOST]
    device.run(np.negative, x, y)
    assert device.copy(y).uploads == 1
    np.testing.assert_array_equal(x.host(), np.zeros(4))


def test_residency_goes_with_its_tnode():
    t = TNode("t", (2,))
    t.set_host([1.0, 2.0])
    state = weakref.ref(residency.of(t))
    del t
    gc.collect()
    assert state() is None


def test_host_only_runs_do_no_bookkeeping_until_a_device_place_exists(c_context, monkeypatch):
    """A process without devices pays nothing per run for coherence."""
    monkeypatch.setattr(Residency, "device_places", 0)
    x, y = TNode("x", (3,)), TNode("y", (3,))
    routine = c_context.compile(pointwise(y, "neg", x))
    x.set_host([1.0, 2.0, 3.0])
    before = residency.of(y).latest
    routine.run()
    assert residency.of(y).latest == before and residency.computed(y)
    np.testing.assert_array_equal(y.host(), [-1.0, -2.0, -3.0])
    FakeDevice().copy(y)  # a device copy made after the host write must not count as current
    assert not residency.of(y).is_current(next(p for p in residency.of(y).held if p != HOST))
