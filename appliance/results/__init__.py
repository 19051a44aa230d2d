"""Result files written per image: mask and overlay PNGs, and result.json."""
