// Light or dark, remembered per browser; the first visit follows the system setting.
import { useState } from "react";

export type Theme = "light" | "dark";
const KEY = "pulse.theme";

function initial(): Theme {
  const saved = localStorage.getItem(KEY);
  const theme = saved === "light" || saved === "dark" ? saved : matchMedia("(prefers-color-scheme: dark)").matches ? "dark" : "light";
  return apply(theme);
}

// Set on <html> at once (not in an effect): children such as the chart read the CSS variables in
// their own effects, which run before their parents'.
function apply(theme: Theme): Theme {
  document.documentElement.dataset.theme = theme;
  return theme;
}

export function useTheme(): [Theme, () => void] {
  const [theme, setTheme] = useState<Theme>(initial);
  const toggle = () => {
    const next = apply(theme === "dark" ? "light" : "dark");
    localStorage.setItem(KEY, next);
    setTheme(next);
  };
  return [theme, toggle];
}
