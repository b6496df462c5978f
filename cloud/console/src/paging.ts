// Server-side paging by cursor: a stack of cursors (page 1 has none) that belongs to one set of
// filters; when the filters change the stack starts again at page 1. Every list of the API answers
// {items, next_cursor}.
import { useState } from "react";

export type Page<T> = { items: T[]; next_cursor: string | null };

export type CursorStack = { key: string; cursors: (string | null)[] };

export function cursorsFor(stack: CursorStack, key: string): (string | null)[] {
  return stack.key === key ? stack.cursors : [null];
}

export function next(stack: CursorStack, key: string, cursor: string | null): CursorStack {
  if (!cursor) return stack;
  const cursors = cursorsFor(stack, key);
  return { key, cursors: [...cursors, cursor] };
}

export function previous(stack: CursorStack, key: string): CursorStack {
  const cursors = cursorsFor(stack, key);
  return { key, cursors: cursors.length > 1 ? cursors.slice(0, -1) : cursors };
}

/** The paging state of one list whose filters are `filters` (any JSON-able value). */
export function usePaging(filters: unknown) {
  const key = JSON.stringify(filters);
  const [stack, setStack] = useState<CursorStack>({ key, cursors: [null] });
  const cursors = cursorsFor(stack, key);
  return {
    cursor: cursors[cursors.length - 1],
    page: cursors.length,
    next: (cursor: string | null) => setStack((s) => next(s, key, cursor)),
    previous: () => setStack((s) => previous(s, key)),
    reset: () => setStack({ key, cursors: [null] }),
  };
}
