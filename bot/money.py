"""Money as integers. Workers AI bills in Neurons at $0.011 per 1,000 Neurons.

Prices are computed in nano-dollars (1 milli-Neuron = 11 nano-dollars exactly), then rounded UP
once per charge into the two units the ledger keeps: micro-dollars (quotas, display) and
milli-Neurons (the daily Neuron cap). Never a float.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

NANO_USD_PER_MILLI_NEURON = 11
NANO_USD_PER_MICRO_USD = 1000
NANO_USD_PER_NEURON = NANO_USD_PER_MILLI_NEURON * 1000
MICRO_USD_PER_USD = 1_000_000
MILLI_NEURONS_PER_NEURON = 1000


def ceil_div(numerator: int, denominator: int) -> int:
    return -(-numerator // denominator)


def nano_to_micro_usd(nano_usd: int) -> int:
    return ceil_div(nano_usd, NANO_USD_PER_MICRO_USD)


def nano_usd_to_milli_neurons(nano_usd: int) -> int:
    return ceil_div(nano_usd, NANO_USD_PER_MILLI_NEURON)


def parse_decimal(text: str) -> Decimal:
    """Parse a non-negative decimal number given as text; ValueError when it is not one."""
    try:
        value = Decimal(text.strip())
    except (InvalidOperation, AttributeError):
        raise ValueError(f"not a number: {text!r}") from None
    if not value.is_finite() or value < 0:
        raise ValueError("must be a finite number ≥ 0")
    return value


def usd_to_micro(text: str) -> int:
    """'0.05' → 50000. Rejects more precision than a micro-dollar rather than rounding silently."""
    micro = parse_decimal(text) * MICRO_USD_PER_USD
    if micro != micro.to_integral_value():
        raise ValueError("more precise than one micro-dollar (6 decimal places)")
    return int(micro)


def usd_to_nano(text: str) -> int:
    nano = parse_decimal(text) * NANO_USD_PER_MICRO_USD * MICRO_USD_PER_USD
    if nano != nano.to_integral_value():
        raise ValueError("more precise than one nano-dollar (9 decimal places)")
    return int(nano)


def neurons_to_nano(text: str) -> int:
    nano = parse_decimal(text) * NANO_USD_PER_NEURON
    if nano != nano.to_integral_value():
        raise ValueError("more precise than one milli-Neuron (3 decimal places)")
    return int(nano)


def format_usd(micro_usd: int) -> str:
    """50000 → '$0.05'; 634 → '$0.000634'. Exact: trailing zeros trimmed, at least 2 places."""
    sign = "-" if micro_usd < 0 else ""
    whole, frac = divmod(abs(micro_usd), MICRO_USD_PER_USD)
    frac_text = f"{frac:06d}".rstrip("0")
    frac_text = frac_text.ljust(2, "0")
    return f"{sign}${whole}.{frac_text}"


def micro_to_usd_decimal(micro_usd: int) -> Decimal:
    """For JSON output: an exact decimal number of dollars."""
    return Decimal(micro_usd) / MICRO_USD_PER_USD


def format_neurons(milli_neurons: int) -> str:
    whole, frac = divmod(milli_neurons, MILLI_NEURONS_PER_NEURON)
    return f"{whole}.{frac:03d}".rstrip("0").rstrip(".")
