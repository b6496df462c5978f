// What the signed-in account may see and do, provided by the shell (App.tsx) to every page.
import { createContext, useContext } from "react";
import type { Theme } from "../theme";
import type { Me } from "../types";

export type Access = { me: Me; tenant: boolean; canWrite: boolean; operator: boolean; theme: Theme };

export const AccessContext = createContext<Access | null>(null);
export const useAccess = (): Access => useContext(AccessContext)!;
