"""Device functions shared by rnnlm's Triton kernels: one stable tanh, relu, their derivatives, and the recurrence
kernels' products in a precision (dot_operand, mm: ieee / tf32 / bf16 / fp16, emulated in the interpreter).

tanh. The textbook form (1 - e^{-2x}) / (1 + e^{-2x}) overflows e^{-2x} to inf below about x = -44 in fp32
and returns inf/inf = NaN; written with |x| it never overflows but loses every digit near 0, where
1 - e^{-2|x|} cancels (relative error eps / (2|x|): 3e-6 at |x| = 0.01 in fp32). So, with a = min(|x|, 20):

    tanh(|x|) = -m / (2 + m),   m = expm1(-2a) = e^{-2a} - 1,

and expm1 is computed accurately with Kahan's trick: u = e^{y}; expm1(y) = y if u == 1, else
(u - 1) * y / log(u). u - 1 is exact (Sterbenz) and the rounding error made in u cancels between the
numerator and log(u), so expm1 (and tanh) are within a few ulps everywhere (measured against float64
numpy: <= 3 ulp in fp32 and fp64 for x in [-50, 50] and |x| down to 1e-300). The clamp at 20 keeps u out of
the subnormals, where log(u) would be coarse; tanh(20) rounds to exactly 1 in fp32 and fp64 alike. The sign
is put back at the end, so tanh is exactly odd. NaN stays NaN (the clamp propagates it).

Derivatives are taken from the stored output h = phi(a) so that backward never needs the pre-activation:
tanh'(a) = 1 - h^2; relu'(a) = [h > 0] (torch's convention: 0 at a = 0).

Products (kernels/rnn.py's docstring has the precisions): bf16 / fp16 round both operands and accumulate in fp32;
with EMULATE (the interpreter, which has no bf16 arithmetic and whose fp32 -> bf16 cast truncates) the rounding is
done with integer bit operations (bf16) or numpy's cast (fp16) and the dot runs in fp32, where products of bf16 or
fp16 values are exact: the same arithmetic.
"""
from kernels import _runtime  # sets TRITON_INTERPRET before triton is imported

import triton
import triton.language as tl

# kernels take the nonlinearity as a constexpr code: its index here (tanh 0, relu 1)
NONLINEARITIES = ("tanh", "relu")


def device_function(fn):
    """@triton.jit for helpers that kernels call (possibly once per time step).

    In the interpreter every call of a @triton.jit helper re-patches triton.language (inspect.getmembers over
    its modules: ~0.4 ms a call, more than a time step's arithmetic at small sizes). There the helper is
    instead the interpreter's own rewritten Python function (the same AST rewrite it would apply), called
    directly inside the calling kernel's already-patched scope. Compiled for a GPU it is a plain JITFunction.
    """
    jitted = triton.jit(fn)
    return jitted.rewrite() if _runtime.INTERPRETED else jitted


def nonlinearity_code(name: str) -> int:
    """Maps "tanh" | "relu" to the constexpr code used by the kernels."""
    return NONLINEARITIES.index(name)


@device_function
def tanh(x):
    """Stable, accurate tanh (see the module docstring); works for fp32 and fp64 tensors."""
    a = tl.minimum(tl.abs(x), 20.0, propagate_nan=tl.PropagateNan.ALL)
    y = -2.0 * a
    u = tl.exp(y)
    # Kahan: expm1(y) = (u - 1) * y / log(u); u == 1 only when |y| is below half an ulp of 1 (the inner
    # where keeps that lane's 0/0 from being computed at all)
    one = u == 1.0
    m = tl.where(one, y, (u - 1.0) * (y / tl.where(one, 1.0, tl.log(u))))
    t = -m / (2.0 + m)
    return tl.where(x < 0, -t, t)


@device_function
def relu(x):
    # written as "x < 0 -> 0" so that NaN passes through, as torch.relu does
    return tl.where(x < 0, 0.0, x).to(x.dtype)


@device_function
def activation(x, NONLINEARITY: tl.constexpr):
    """phi(x) for NONLINEARITY = 0 (tanh) | 1 (relu)."""
    if NONLINEARITY == 0:
        return tanh(x)
    else:
        return relu(x)


@device_function
def activation_grad_from_output(h, NONLINEARITY: tl.constexpr):
    """phi'(a) written with h = phi(a): 1 - h^2 for tanh, [h > 0] for relu."""
    if NONLINEARITY == 0:
        return 1.0 - h * h
    else:
        return tl.where(h > 0, 1.0, 0.0).to(h.dtype)


# ----------------------------------------------------------------------------------------------------------
# Products in a precision (the recurrence kernels: kernels/rnn.py and kernels/_rnn_persistent.py)
# ----------------------------------------------------------------------------------------------------------
@device_function
def round_to_bf16(x):
    """fp32 -> nearest bf16 (ties to even), kept in fp32, with integer ops: the interpreter's own
    fp32 -> bf16 cast truncates instead of rounding, and it has no bf16 arithmetic."""
    bits = x.to(tl.int32, bitcast=True)
    bits = (bits + (0x7FFF + ((bits >> 16) & 1))) & -65536  # -65536 == 0xFFFF0000
    return bits.to(tl.float32, bitcast=True)


@device_function
def dot_operand(x, PRECISION: tl.constexpr, EMULATE: tl.constexpr):
    """A dot operand in the requested precision (bf16/fp16: rounded; emulated in fp32 in the interpreter)."""
    if PRECISION == "bf16":
        if EMULATE:
            return round_to_bf16(x)
        else:
            return x.to(tl.bfloat16)
    elif PRECISION == "fp16":
        if EMULATE:
            return x.to(tl.float16).to(tl.float32)  # numpy's cast: round to nearest even
        else:
            return x.to(tl.float16)
    else:
        return x


@device_function
def mm(a, b, acc, PRECISION: tl.constexpr, EMULATE: tl.constexpr):
    """acc + a @ b; a is rounded here, b must already be a dot_operand(). Accumulates in acc's dtype
    (out_dtype=acc.dtype: Triton 3.6 asserts that an fp64 accumulator is declared as such)."""
    a = dot_operand(a, PRECISION, EMULATE)
    if PRECISION == "tf32":
        return tl.dot(a, b, acc, input_precision="tf32", out_dtype=acc.dtype)
    elif PRECISION == "bf16" or PRECISION == "fp16":
        if EMULATE:
            return tl.dot(a, b, acc, input_precision="ieee", out_dtype=acc.dtype)  # exact products
        else:
            return tl.dot(a, b, acc, out_dtype=acc.dtype)  # 16-bit operands -> fp32 accumulator (mma)
    else:
        return tl.dot(a, b, acc, input_precision="ieee", out_dtype=acc.dtype)
