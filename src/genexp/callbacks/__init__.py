"""Run-level callbacks: NaN guard, training cost, sample quality, sweep comparison."""
