"""The preflight's two pictures: how long the tokenized examples are against max length, and the estimated
peak memory against what the device has free. Plain HTML/SVG strings, so they render the same in any browser
and need no plotting library; colours come from the theme's CSS variables with fallbacks."""

import html

from core.data.preflight import LengthBin
from core.training.preflight import MemoryEstimate

WIDTH, HEIGHT, LEFT, TOP, BOTTOM = 600, 150, 36, 18, 118  # SVG user units: plot area LEFT..WIDTH, TOP..BOTTOM
KEPT = "fill:var(--color-accent, #f97316)"
CUT = "fill:var(--error-text-color, #dc2626)"


def length_chart(bins: list[LengthBin], max_length: int, truncated_share: float) -> str:
    """A histogram of tokens per example; the part of each bar above max length (truncated) in red, and a dashed
    line at max length (or a note when it lies beyond the longest example)."""
    if not bins:
        return ""
    first, span, tallest = bins[0].start, bins[-1].end, max(b.count for b in bins) or 1

    def x(tokens: float) -> float:
        return LEFT + (WIDTH - LEFT) * (tokens - first) / (span - first)

    def y(count: float) -> float:
        return BOTTOM - (BOTTOM - TOP) * count / tallest

    shapes = []
    for b in bins:
        left, width = x(b.start) + 0.5, max(x(b.end) - x(b.start) - 1, 1)
        kept = b.count - b.truncated
        shapes.append(f'<rect x="{left:.1f}" y="{y(kept):.1f}" width="{width:.1f}" height="{BOTTOM - y(kept):.1f}" '
                      f'style="{KEPT}"><title>{b.start}-{b.end - 1} tokens: {b.count}</title></rect>')
        if b.truncated:
            shapes.append(f'<rect class="cut" x="{left:.1f}" y="{y(b.count):.1f}" width="{width:.1f}" '
                          f'height="{y(kept) - y(b.count):.1f}" style="{CUT}"/>')
    text = 'style="fill:var(--body-text-color, #333);font-size:12px"'
    shapes += [f'<line x1="{LEFT}" y1="{BOTTOM}" x2="{WIDTH}" y2="{BOTTOM}" stroke="currentColor" '
               'stroke-opacity=".4"/>',
               f'<text x="{LEFT}" y="{BOTTOM + 14}" {text}>{first}</text>',
               f'<text x="{WIDTH}" y="{BOTTOM + 14}" text-anchor="end" {text}>{span - 1}</text>',
               f'<text x="{(LEFT + WIDTH) / 2}" y="{BOTTOM + 28}" text-anchor="middle" {text}>'
               "tokens per example</text>",
               f'<text x="{LEFT - 4}" y="{TOP + 4}" text-anchor="end" {text}>{tallest}</text>']
    if max_length < span:
        mark = x(max_length)
        side = ("end", -4) if mark > (LEFT + WIDTH) / 2 else ("start", 4)  # the label stays inside the picture
        shapes += [f'<line class="max-length" x1="{mark:.1f}" y1="{TOP - 6}" x2="{mark:.1f}" y2="{BOTTOM}" '
                   'stroke="currentColor" stroke-dasharray="4 3"/>',
                   f'<text x="{mark + side[1]:.1f}" y="{TOP - 8}" text-anchor="{side[0]}" {text}>'
                   f"max length {max_length}</text>"]
        note = f"{truncated_share:.0%} of examples are longer than max length {max_length} and get truncated."
    else:
        note = f"Max length {max_length} is beyond the longest example: nothing is truncated."
    svg = (f'<svg viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="Histogram of example lengths" '
           f'preserveAspectRatio="xMidYMid meet">{"".join(shapes)}</svg>')
    return (f'<div class="lf-lengths" data-max-length="{max_length}" data-truncated="{truncated_share:.4f}">'
            f"<p><b>Example lengths</b> (tokens, before truncation)</p>{svg}<p><small>{html.escape(note)}</small></p>"
            "</div>")


def memory_gauge(memory: MemoryEstimate) -> str:
    """Estimated peak memory against what the device has free, its parts, and the fixes when it does not fit."""
    share = min(memory.device_peak_mb / memory.available_mb, 1.0) if memory.available_mb else 1.0
    each = f" ({memory.processes} processes of {size(memory.peak_mb)})" if memory.processes > 1 else ""
    parts = " · ".join(f"{name} {size(value)}" for name, value in (
        ("weights", memory.weights_mb), ("adapter + optimizer", memory.adapter_mb),
        ("activations", memory.activations_mb), ("logits", memory.logits_mb), ("runtime", memory.runtime_mb)))
    out = [
        f'<div class="lf-memory" data-fits="{str(memory.fits).lower()}">',
        f"<p><b>Estimated peak memory:</b> {size(memory.device_peak_mb)}{each} of {size(memory.available_mb)} "
        "available "
        f"on {html.escape(memory.device)} ({size(memory.device_total_mb)} in all)</p>",
        f'<div class="lf-gauge{"" if memory.fits else " full"}"><div style="width:{share * 100:.1f}%"></div></div>',
        f"<p><small>{parts}</small></p>",
    ]
    if not memory.fits:
        out.append(
            '<div class="lf-warning"><b>This run will likely run out of memory.</b> To fit, lower <b>Batch size</b> '
            "(raise Gradient accumulation to keep the step size) or <b>Max length</b>, choose <b>nf4</b> base "
            "quantization, or tick <b>Gradient checkpointing</b> under Advanced.</div>")
    return "".join(out) + "</div>"


def size(mb: float) -> str:
    """MB below 10 GB (the small figures matter there), GB above."""
    return f"{mb:,.0f} MB" if mb < 10 * 1024 else f"{mb / 1024:,.1f} GB"
