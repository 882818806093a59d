#!/usr/bin/env python3
"""GPU workload for measuring what running inside a Nimbus instance costs (docs/gpu-bench.md).

What: two GPU-bound workloads, each timed on GPU 0 and reported as one JSON line on stdout:

  fma   a compute-bound kernel: every thread runs ITERS iterations of 32 fused multiply-adds on
        8 independent registers (fma.rn.f32), launched on SMs*8 blocks of 256 threads; reports
        GFLOP/s (2 flops per FMA);
  copy  a memory-bound kernel: a device-to-device copy of a 1 GiB buffer, one 16-byte load and
        store per thread, LAUNCHES times per repetition; reports GB/s (bytes read + written).

Each workload is warmed up, then timed RUNS times with time.perf_counter() around the launch(es)
and cuCtxSynchronize(); the line has workload, device_name, runs, median_ms, min_ms, gflops or
gbps (from the median), and the parameters. scripts/device-gpu-bench runs this on the bare
host and inside an instance and compares the medians.

How: only Python 3's standard library. ctypes calls the CUDA driver API in libcuda.so.1
(cuInit, cuDeviceGet, cuCtxCreate_v2, cuModuleLoadDataEx, cuModuleGetFunction, cuMemAlloc_v2,
cuLaunchKernel, cuCtxSynchronize, cuMemcpyDtoH_v2, cuMemFree_v2, cuCtxDestroy_v2), and the
kernels are hand-written PTX that the driver JIT-compiles for the GPU it has.

Why no CUDA toolkit: the machines this runs on (a borrowed GPU host without network, and the
Debian 12 instance image) have the NVIDIA driver, which brings libcuda.so.1 and its PTX JIT,
but no nvcc, no CUDA runtime and no pip packages. The driver is all a kernel launch needs.

Usage: python3 scripts/gpu-bench.py [--workload fma|copy|all] [--runs N] [--warmup N]
                                     [--iters N] [--launches N] [--mib N] [--device N]
Exit status: 0 measured; 1 a CUDA call failed (its error name is printed) or a result was
wrong; 2 no libcuda.so.1 (no NVIDIA driver on this machine).
"""

import argparse
import ctypes
import json
import statistics
import sys
import time

# 8 independent accumulators, 4 rounds each per loop iteration: 32 FMAs per iteration, so the
# loop counter and branch are a small share of the issued instructions. x <- x*0.9999 + 0.0001
# converges to 1.0, so the values stay finite; distinct start values keep ptxas from merging
# the chains.
CHAINS = 8
ROUNDS = 4
FMAS_PER_ITER = CHAINS * ROUNDS


def _ptx():
    fmas = "\n".join(
        "    fma.rn.f32 %%f%d, %%f%d, %%f9, %%f10;" % (c, c)
        for _ in range(ROUNDS)
        for c in range(1, CHAINS + 1)
    )
    inits = "\n".join(
        "    add.f32 %%f%d, %%f0, 0f%08X;" % (c, _f32_bits(float(c)))
        for c in range(1, CHAINS + 1)
    )
    return r"""
.version 7.0
.target sm_70
.address_size 64

.visible .entry fma_loop(
    .param .u64 out,
    .param .u32 iters
)
{
    .reg .pred %p<2>;
    .reg .b32 %r<8>;
    .reg .f32 %f<12>;
    .reg .b64 %rd<4>;

    ld.param.u64 %rd1, [out];
    ld.param.u32 %r1, [iters];
    mov.u32 %r2, %ctaid.x;
    mov.u32 %r3, %ntid.x;
    mov.u32 %r4, %tid.x;
    mad.lo.s32 %r5, %r2, %r3, %r4;
    cvt.rn.f32.u32 %f0, %r4;
    mul.f32 %f0, %f0, 0f3A83126F;
""" + inits + r"""
    mov.f32 %f9, 0f3F7FF972;
    mov.f32 %f10, 0f38D1B717;
    mov.u32 %r6, 0;
    setp.eq.u32 %p1, %r1, 0;
    @%p1 bra FMA_DONE;
FMA_LOOP:
""" + fmas + r"""
    add.u32 %r6, %r6, 1;
    setp.lt.u32 %p1, %r6, %r1;
    @%p1 bra FMA_LOOP;
FMA_DONE:
    add.f32 %f11, %f1, %f2;
    add.f32 %f11, %f11, %f3;
    add.f32 %f11, %f11, %f4;
    add.f32 %f11, %f11, %f5;
    add.f32 %f11, %f11, %f6;
    add.f32 %f11, %f11, %f7;
    add.f32 %f11, %f11, %f8;
    cvta.to.global.u64 %rd1, %rd1;
    mul.wide.u32 %rd2, %r5, 4;
    add.u64 %rd3, %rd1, %rd2;
    st.global.f32 [%rd3], %f11;
    ret;
}

.visible .entry copy16(
    .param .u64 dst,
    .param .u64 src,
    .param .u64 n
)
{
    .reg .pred %p<2>;
    .reg .b32 %r<8>;
    .reg .b64 %rd<10>;

    ld.param.u64 %rd1, [dst];
    ld.param.u64 %rd2, [src];
    ld.param.u64 %rd3, [n];
    mov.u32 %r1, %ctaid.x;
    mov.u32 %r2, %ntid.x;
    mov.u32 %r3, %tid.x;
    mul.wide.u32 %rd4, %r1, %r2;
    cvt.u64.u32 %rd5, %r3;
    add.u64 %rd4, %rd4, %rd5;
    setp.ge.u64 %p1, %rd4, %rd3;
    @%p1 bra COPY_DONE;
    cvta.to.global.u64 %rd1, %rd1;
    cvta.to.global.u64 %rd2, %rd2;
    shl.b64 %rd6, %rd4, 4;
    add.u64 %rd7, %rd2, %rd6;
    add.u64 %rd8, %rd1, %rd6;
    ld.global.v4.u32 {%r4, %r5, %r6, %r7}, [%rd7];
    st.global.v4.u32 [%rd8], {%r4, %r5, %r6, %r7};
COPY_DONE:
    ret;
}
"""


def _f32_bits(x):
    return int.from_bytes(ctypes.c_float(x), "little") & 0xFFFFFFFF


CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT = 16
CU_JIT_ERROR_LOG_BUFFER = 5
CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES = 6
THREADS = 256


class CudaError(Exception):
    pass


class Driver:
    """The few driver API entry points used, with argument types, and error names on failure."""

    def __init__(self, lib):
        self.lib = lib
        c_int, c_uint, c_size, vp = ctypes.c_int, ctypes.c_uint, ctypes.c_size_t, ctypes.c_void_p
        u64 = ctypes.c_uint64
        sigs = {
            "cuInit": [c_uint],
            "cuDriverGetVersion": [ctypes.POINTER(c_int)],
            "cuDeviceGet": [ctypes.POINTER(c_int), c_int],
            "cuDeviceGetName": [ctypes.c_char_p, c_int, c_int],
            "cuDeviceGetAttribute": [ctypes.POINTER(c_int), c_int, c_int],
            "cuCtxCreate_v2": [ctypes.POINTER(vp), c_uint, c_int],
            "cuCtxDestroy_v2": [vp],
            "cuCtxSynchronize": [],
            "cuModuleLoadDataEx": [
                ctypes.POINTER(vp), ctypes.c_char_p, c_uint,
                ctypes.POINTER(c_int), ctypes.POINTER(vp),
            ],
            "cuModuleUnload": [vp],
            "cuModuleGetFunction": [ctypes.POINTER(vp), vp, ctypes.c_char_p],
            "cuMemAlloc_v2": [ctypes.POINTER(u64), c_size],
            "cuMemFree_v2": [u64],
            "cuMemsetD32_v2": [u64, c_uint, c_size],
            "cuMemcpyDtoH_v2": [vp, u64, c_size],
            "cuLaunchKernel": [
                vp, c_uint, c_uint, c_uint, c_uint, c_uint, c_uint, c_uint, vp,
                ctypes.POINTER(vp), ctypes.POINTER(vp),
            ],
        }
        sigs["cuDevicePrimaryCtxRetain"] = [ctypes.POINTER(vp), c_int]
        sigs["cuDevicePrimaryCtxRelease_v2"] = [c_int]
        sigs["cuCtxSetCurrent"] = [vp]
        for name, argtypes in sigs.items():
            fn = getattr(lib, name, None)
            if fn is None:
                continue  # checked where used: only the context calls have an alternative
            fn.argtypes = argtypes
            fn.restype = c_int
        lib.cuGetErrorName.argtypes = [c_int, ctypes.POINTER(ctypes.c_char_p)]
        lib.cuGetErrorName.restype = c_int

    def __getattr__(self, name):
        fn = getattr(self.lib, name)

        def call(*args):
            rc = fn(*args)
            if rc != 0:
                raise CudaError("%s failed: %s" % (name, self.error_name(rc)))

        return call

    def error_name(self, rc):
        s = ctypes.c_char_p()
        if self.lib.cuGetErrorName(rc, ctypes.byref(s)) == 0 and s.value:
            return "%s (%d)" % (s.value.decode(), rc)
        return "CUresult %d" % rc


def _params(*values):
    """kernelParams: an array of pointers to each argument's value."""
    arr = (ctypes.c_void_p * len(values))()
    for i, v in enumerate(values):
        arr[i] = ctypes.addressof(v)
    return arr


def _time(sync, work, warmup, runs):
    for _ in range(warmup):
        work()
        sync()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        work()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return times


def bench_fma(cu, func, sms, args):
    blocks = sms * 8
    threads = blocks * THREADS
    out = ctypes.c_uint64()
    cu.cuMemAlloc_v2(ctypes.byref(out), threads * 4)
    try:
        iters = ctypes.c_uint32(args.iters)
        params = _params(out, iters)

        def work():
            cu.cuLaunchKernel(func, blocks, 1, 1, THREADS, 1, 1, 0, None, params, None)

        times = _time(cu.cuCtxSynchronize, work, args.warmup, args.runs)
        host = (ctypes.c_float * threads)()
        cu.cuMemcpyDtoH_v2(host, out.value, threads * 4)
    finally:
        cu.cuMemFree_v2(out.value)
    # Each chain converges to 1.0, so every thread writes about CHAINS.
    for v in (host[0], host[threads - 1]):
        if args.iters >= 100000 and not abs(v - CHAINS) < 0.05:
            raise CudaError("fma kernel wrote %r, expected about %d" % (v, CHAINS))
    flops = 2.0 * FMAS_PER_ITER * args.iters * threads
    med = statistics.median(times)
    return {
        "gflops": round(flops / (med * 1e-3) / 1e9, 1),
        "blocks": blocks,
        "threads_per_block": THREADS,
        "iters": args.iters,
        "fmas_per_thread": FMAS_PER_ITER * args.iters,
    }, times


def bench_copy(cu, func, args):
    nbytes = args.mib << 20
    n = nbytes // 16
    blocks = (n + THREADS - 1) // THREADS
    src, dst = ctypes.c_uint64(), ctypes.c_uint64()
    cu.cuMemAlloc_v2(ctypes.byref(src), nbytes)
    try:
        cu.cuMemAlloc_v2(ctypes.byref(dst), nbytes)
        try:
            cu.cuMemsetD32_v2(src.value, 0x3F800000, nbytes // 4)
            cu.cuMemsetD32_v2(dst.value, 0, nbytes // 4)
            count = ctypes.c_uint64(n)
            params = _params(dst, src, count)

            def work():
                for _ in range(args.launches):
                    cu.cuLaunchKernel(func, blocks, 1, 1, THREADS, 1, 1, 0, None, params, None)

            times = _time(cu.cuCtxSynchronize, work, args.warmup, args.runs)
            head, tail = (ctypes.c_float * 4)(), (ctypes.c_float * 4)()
            cu.cuMemcpyDtoH_v2(head, dst.value, 16)
            cu.cuMemcpyDtoH_v2(tail, dst.value + nbytes - 16, 16)
        finally:
            cu.cuMemFree_v2(dst.value)
    finally:
        cu.cuMemFree_v2(src.value)
    if list(head) + list(tail) != [1.0] * 8:
        raise CudaError("copy kernel left %r ... %r, expected 1.0" % (list(head), list(tail)))
    med = statistics.median(times)
    moved = 2.0 * nbytes * args.launches
    return {
        "gbps": round(moved / (med * 1e-3) / 1e9, 1),
        "buffer_mib": args.mib,
        "launches_per_run": args.launches,
        "blocks": blocks,
        "threads_per_block": THREADS,
    }, times


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workload", choices=("fma", "copy", "all"), default="all")
    p.add_argument("--runs", type=int, default=20, help="timed repetitions (default 20)")
    p.add_argument("--warmup", type=int, default=3, help="untimed repetitions first (default 3)")
    p.add_argument("--iters", type=int, default=1 << 17,
                   help="fma: loop iterations per thread, 32 FMAs each (default 131072)")
    p.add_argument("--launches", type=int, default=64,
                   help="copy: kernel launches per timed repetition (default 64)")
    p.add_argument("--mib", type=int, default=1024, help="copy: buffer size in MiB (default 1024)")
    p.add_argument("--device", type=int, default=0, help="CUDA device ordinal (default 0)")
    args = p.parse_args()
    if args.runs < 1 or args.warmup < 0 or args.iters < 0 or args.launches < 1 or args.mib < 1:
        p.error("--runs, --launches and --mib must be positive, --warmup and --iters not negative")

    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError:
        print("no libcuda.so.1: no NVIDIA driver here", file=sys.stderr)
        return 2

    try:
        cu = Driver(lib)
        cu.cuInit(0)
        version = ctypes.c_int()
        cu.cuDriverGetVersion(ctypes.byref(version))
        dev = ctypes.c_int()
        cu.cuDeviceGet(ctypes.byref(dev), args.device)
        name = ctypes.create_string_buffer(256)
        cu.cuDeviceGetName(name, 256, dev.value)
        sms = ctypes.c_int()
        cu.cuDeviceGetAttribute(ctypes.byref(sms), CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, dev.value)
        ctx = ctypes.c_void_p()
        primary = not hasattr(lib, "cuCtxCreate_v2")
        if primary:
            # A driver without the old entry point: the device's primary context instead.
            cu.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), dev.value)
            cu.cuCtxSetCurrent(ctx)
        else:
            cu.cuCtxCreate_v2(ctypes.byref(ctx), 0, dev.value)
    except CudaError as e:
        print("gpu-bench: %s" % e, file=sys.stderr)
        return 1

    rc = 0
    try:
        module = ctypes.c_void_p()
        log = ctypes.create_string_buffer(8192)
        opts = (ctypes.c_int * 2)(CU_JIT_ERROR_LOG_BUFFER, CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES)
        vals = (ctypes.c_void_p * 2)(ctypes.cast(log, ctypes.c_void_p), ctypes.c_void_p(len(log)))
        try:
            cu.cuModuleLoadDataEx(ctypes.byref(module), _ptx().encode(), 2, opts, vals)
        except CudaError as e:
            raise CudaError("%s; JIT log: %s" % (e, log.value.decode(errors="replace").strip()))
        common = {
            "device_name": name.value.decode(errors="replace"),
            "driver_version": version.value,
            "sms": sms.value,
            "runs": args.runs,
        }
        workloads = ("fma", "copy") if args.workload == "all" else (args.workload,)
        for w in workloads:
            func = ctypes.c_void_p()
            cu.cuModuleGetFunction(ctypes.byref(func), module, b"fma_loop" if w == "fma" else b"copy16")
            if w == "fma":
                extra, times = bench_fma(cu, func, sms.value, args)
            else:
                extra, times = bench_copy(cu, func, args)
            line = {"workload": w}
            line.update(common)
            line["median_ms"] = round(statistics.median(times), 3)
            line["min_ms"] = round(min(times), 3)
            line.update(extra)
            line["times_ms"] = [round(t, 3) for t in times]
            print(json.dumps(line), flush=True)
        cu.cuModuleUnload(module)
    except CudaError as e:
        print("gpu-bench: %s" % e, file=sys.stderr)
        rc = 1
    finally:
        if primary:
            done = lib.cuDevicePrimaryCtxRelease_v2(dev.value)
        else:
            done = lib.cuCtxDestroy_v2(ctx)
        if done != 0:
            rc = rc or 1
    return rc


if __name__ == "__main__":
    sys.exit(main())
