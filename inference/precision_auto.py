"""Which precision `precision="auto"` runs an export in: the fastest one this CPU runs natively whose recorded
accuracy is within tolerance of fp32.

Owns: the rule (`choose_precision`, a pure function of the export's manifest, the device and the CPU's facts),
its tolerances, the facts about this CPU it needs (`cpu_facts`), and the one sentence that says what was
chosen and why. Does not own: measuring the accuracy records (`inference.precision_records` writes them
into the manifest at export), or configuring and running a precision (`inference.predictor`).

The rule, by speed (measured on an AVX512-BF16 + VNNI EPYC, bert-base, SQuAD seq 384: fp32 2.85 seq/s,
bf16 5.4, int8 6.9): int8 > bf16 > fp32.
  * int8 only where the export ships a quantized copy, the CPU has 8-bit dot-product instructions
    (`utils.runtime.INT8_FAST_CPU_FLAGS`: without them oneDNN int8 is not faster, see `inference.quantize`),
    and EM/F1 on a SQuAD file with answers were recorded within EM_TOLERANCE / F1_TOLERANCE of fp32; the
    verification batch alone is too few examples to trust int8's larger error (measured: -2.0 EM).
  * bf16 only where the export recorded it, the CPU has native bf16 (emulated bf16 is slower than fp32),
    and its recorded EM/F1 is within tolerance or, with no EM/F1, it agreed with fp32 on every
    verification answer / label.
  * otherwise fp32; always fp32 on a GPU (bf16 and int8 are oneDNN CPU routes) and for an export made
    before these records existed. An explicitly asked-for precision is never second-guessed here.
"""
import dataclasses

from inference import model_dir as layout
from utils.runtime import (BF16_NATIVE_CPU_FLAGS, INT8_FAST_CPU_FLAGS, cpu_bf16_support, cpu_flags,
                           cpu_int8_flags)

AUTO = "auto"
RECORDS_KEY = "precisions"  # the manifest's entry: {precision: record}, see inference.precision_records
# A precision may lose at most this much EM / F1 (points, on the recorded SQuAD file) against fp32. Scoring
# higher than fp32 is never a reason to refuse it.
EM_TOLERANCE = 1.0
F1_TOLERANCE = 1.0


@dataclasses.dataclass(frozen=True)
class CpuFacts:
    """What this CPU runs natively, as the chooser needs it.

    Attributes:
      bf16_usable: bool, bf16 programs run here (`utils.runtime.cpu_bf16_support().usable`).
      bf16_native: tuple of str, the native bf16 flags present (avx512_bf16, amx_bf16); empty = emulated.
      int8_flags: tuple of str, the 8-bit dot-product flags present (avx512_vnni, avx_vnni, amx_int8).
    """
    bf16_usable: bool
    bf16_native: tuple = ()
    int8_flags: tuple = ()


@dataclasses.dataclass(frozen=True)
class Choice:
    """A precision and the sentence that says why (logged, and in the predictor's info)."""
    precision: str
    reason: str


def cpu_facts():
    """CpuFacts of this machine (reads /proc/cpuinfo and asks Paddle about bf16)."""
    flags = cpu_flags() or frozenset()
    support = cpu_bf16_support()
    native = tuple(f for f in BF16_NATIVE_CPU_FLAGS if f in flags) if support.native else ()
    return CpuFacts(bf16_usable=support.usable, bf16_native=native, int8_flags=cpu_int8_flags(flags))


def _accuracy(name, record, trust_verification):
    """(within tolerance, words) for one precision's record: EM/F1 when recorded, else (if trusted) the
    verification batch's agreement."""
    squad = record.get("squad")
    if squad:
        d_em, d_f1 = squad["delta_exact_match"], squad["delta_F1"]
        ok = -d_em <= EM_TOLERANCE and -d_f1 <= F1_TOLERANCE
        return ok, (f"{name} EM/F1 {d_em:+.2f}/{d_f1:+.2f} vs fp32 on {squad['questions']} questions "
                    f"({'within' if ok else 'outside'} the {EM_TOLERANCE:g}/{F1_TOLERANCE:g} tolerance)")
    check = record.get("verification")
    if not check:
        return False, f"{name} has no accuracy record"
    agreement = (f"{check['agree']}/{check['windows']} verification answers "
                 f"(max |dlogit| {check['max_abs_logit_diff']:.2g})")
    if not trust_verification:
        return False, (f"{name} has only verification-batch agreement ({agreement}), too few examples: "
                       "re-export with --eval-file <SQuAD file with answers> to measure its EM/F1")
    ok = check["agree"] == check["windows"]
    return ok, f"{name} agrees with fp32 on {agreement}" if ok else f"{name} differs from fp32 on {agreement}"


def _int8(manifest, records, cpu):
    """(usable, clause) for int8."""
    if "int8" not in records or not all(n in manifest.get("files", {}) for n in layout.INT8_FILES):
        return False, "int8 not shipped"
    if not cpu.int8_flags:
        return False, ("int8 skipped: this CPU has none of " + "/".join(INT8_FAST_CPU_FLAGS)
                       + ", without which oneDNN int8 is not faster than fp32")
    ok, words = _accuracy("int8", records["int8"], trust_verification=False)
    return ok, f"this CPU has fast int8 ({', '.join(cpu.int8_flags)}); {words}" if ok else f"int8 skipped: {words}"


def _bf16(records, cpu):
    """(usable, clause) for bf16."""
    if "bf16" not in records:
        return False, "bf16 not recorded by the export (it could not run bf16 there)"
    if not cpu.bf16_usable:
        return False, "bf16 skipped: this CPU cannot run bf16"
    if not cpu.bf16_native:
        return False, (f"bf16 skipped: this CPU has no native bf16 ({'/'.join(BF16_NATIVE_CPU_FLAGS)}); "
                       "oneDNN would emulate it, slower than fp32")
    ok, words = _accuracy("bf16", records["bf16"], trust_verification=True)
    return ok, f"this CPU has native bf16 ({', '.join(cpu.bf16_native)}); {words}" if ok else f"bf16 skipped: {words}"


def choose_precision(requested, manifest, *, device, cpu):
    """The precision to load an export in.

    Args:
      requested: "auto", or an explicit precision ("fp32" | "bf16" | "int8"), which is returned as it is
        (whether it can run is `inference.predictor`'s check).
      manifest: dict, the export's manifest (`inference.model_dir.read_manifest`); its RECORDS_KEY entry
        holds the per-precision accuracy records.
      device: "cpu" | "gpu".
      cpu: CpuFacts.

    Returns:
      Choice; for "auto" its reason reads "precision auto -> <precision>: <why>; <why not the others>".
    """
    if requested != AUTO:
        return Choice(requested, f"precision {requested}: asked for")
    if device != "cpu":
        return Choice("fp32", f"precision auto -> fp32: device {device} runs fp32 (bf16 and int8 are oneDNN "
                              "CPU routes)")
    records = manifest.get(RECORDS_KEY)
    if not isinstance(records, dict):
        return Choice("fp32", "precision auto -> fp32: this export has no per-precision accuracy records (made "
                              "before they existed); re-export it to let auto consider bf16 and int8")
    verdicts = {"int8": _int8(manifest, records, cpu), "bf16": _bf16(records, cpu)}
    chosen = next((name for name, (ok, _) in verdicts.items() if ok), "fp32")
    clauses = [verdicts[chosen][1]] if chosen != "fp32" else []
    clauses += [clause for name, (_, clause) in verdicts.items() if name != chosen]
    return Choice(chosen, f"precision auto -> {chosen}: " + "; ".join(clauses))
