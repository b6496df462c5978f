// The signed-in shell: navigation that follows the account's roles, and the page for the URL.
import type { ReactNode } from "react";
import { useQuery } from "@tanstack/react-query";
import { api, logout, logoutEverywhere } from "./api";
import { match, useLocation } from "./router";
import { useTheme } from "./theme";
import type { Me } from "./types";
import { ErrorBox, Loading } from "./components/ui";
import { Link } from "./components/Link";
import { AccessContext, type Access } from "./lib/access";
import { OverviewPage } from "./features/overview/Overview";
import { DevicesPage } from "./features/devices/Devices";
import { DevicePage } from "./features/devices/Device";
import { SitesPage } from "./features/sites/Sites";
import { TenantUsersPage, TenantsPage } from "./features/tenants/Tenants";
import { UsersPage } from "./features/users/Users";
import { WizardPage } from "./features/provision/Wizard";
import { ImportPage } from "./features/provision/Import";
import { ActivationPage } from "./features/provision/Activation";
import { AlertPage, AlertsPage } from "./features/alerts/Alerts";
import { RulesPage } from "./features/rules/Rules";
import { GatewaysPage } from "./features/gateways/Gateways";
import { AuditPage } from "./features/audit/Audit";
import { ReportsPage } from "./features/reports/Reports";
import { SubscriptionPage } from "./features/subscription/Subscription";
import { QuarantinePage } from "./features/quarantine/Quarantine";
import { MaintenancePage } from "./features/maintenance/Maintenance";
import { NocPage } from "./features/operator/Noc";
import { HealthPage } from "./features/operator/Health";
import { OperatorDevicesPage } from "./features/operator/Devices";
import { OperatorAlertsPage } from "./features/operator/Alerts";
import { SystemPage } from "./features/system/System";
import { OperatorAuditPage } from "./features/system/OperatorAudit";
import { NotificationsPage } from "./features/notify/Notifications";
import { EscalationPage } from "./features/notify/Escalation";
import { OncallPage } from "./features/notify/Oncall";
import { NotFound } from "./components/NotFound";
import { JobPage, JobsPage } from "./features/jobs/Jobs";


function page(path: string, access: Access): ReactNode {
  if (access.tenant) {
    if (match("/", path)) return <OverviewPage />;
    if (match("/devices", path)) return <DevicesPage />;
    if (access.canWrite && match("/devices/new", path)) return <WizardPage />;
    if (access.canWrite && match("/devices/import", path)) return <ImportPage />;
    if (access.canWrite && match("/activation-codes", path)) return <ActivationPage />;
    const d = match("/devices/:id", path);
    if (d) return <DevicePage id={d.id} />;
    if (match("/sites", path)) return <SitesPage />;
    if (match("/alerts", path)) return <AlertsPage />;
    const alert = match("/alerts/:id", path);
    if (alert) return <AlertPage id={alert.id} />;
    if (match("/rules", path)) return <RulesPage />;
    if (match("/gateways", path)) return <GatewaysPage />;
    if (match("/jobs", path)) return <JobsPage />;
    const job = match("/jobs/:id", path);
    if (job) return <JobPage id={job.id} />;
    if (match("/notifications", path)) return <NotificationsPage />;
    if (match("/escalation", path)) return <EscalationPage />;
    if (match("/oncall", path)) return <OncallPage />;
    if (match("/subscription", path)) return <SubscriptionPage />;
    if (match("/quarantine", path)) return <QuarantinePage />;
    if (match("/maintenance", path)) return <MaintenancePage />;
    if (match("/reports", path)) return <ReportsPage />;
    if (access.canWrite && match("/audit", path)) return <AuditPage />;
    if (access.canWrite && match("/users", path)) return <UsersPage />;
  }
  if (access.operator) {
    if (match("/", path) || match("/operator/noc", path)) return <NocPage />;
    if (match("/operator/tenants", path)) return <TenantsPage />;
    const tu = match("/operator/tenants/:id/users", path);
    if (tu) return <TenantUsersPage id={tu.id} />;
    if (match("/operator/health", path)) return <HealthPage />;
    if (match("/operator/devices", path)) return <OperatorDevicesPage />;
    if (match("/operator/alerts", path)) return <OperatorAlertsPage />;
    if (match("/operator/system", path)) return <SystemPage />;
    if (access.me.roles.includes("operator-admin") && match("/operator/audit", path)) return <OperatorAuditPage />;
  }
  return <NotFound />;
}

export function App() {
  const [theme, toggleTheme] = useTheme();
  const { path } = useLocation();
  const me = useQuery({ queryKey: ["me"], queryFn: () => api<Me>("/api/v1/me"), staleTime: Infinity });
  if (me.isPending) return <Loading what="Signing in" />;
  if (me.isError) return <ErrorBox error={me.error} retry={() => me.refetch()} />;
  const roles = me.data.roles;
  const access: Access = {
    me: me.data,
    tenant: me.data.tenant_id !== null,
    canWrite: roles.includes("tenant-admin"),
    operator: roles.includes("operator") || roles.includes("operator-admin"),
    theme,
  };
  const nav: [string, string][] = [
    ...(access.tenant
      ? ([
          ["/", "Overview"],
          ["/devices", "Devices"],
          ["/alerts", "Alerts"],
          ["/rules", "Rules"],
          ["/gateways", "Gateways"],
          ["/jobs", "Jobs"],
          ["/sites", "Sites"],
          ["/notifications", "Notifications"],
          ["/escalation", "Escalation"],
          ["/oncall", "On-call"],
          ["/subscription", "Subscription"],
          ["/maintenance", "Maintenance"],
          ["/quarantine", "Quarantine"],
          ["/reports", "Reports"],
          ...(access.canWrite ? [["/activation-codes", "Activation codes"], ["/users", "Users"], ["/audit", "Audit log"]] : []),
        ] as [string, string][])
      : []),
    ...(access.operator
      ? ([
          ["/operator/noc", "NOC"],
          ["/operator/health", "Tenant health"],
          ["/operator/tenants", "Tenants"],
          ["/operator/devices", "All devices"],
          ["/operator/alerts", "All alerts"],
          ["/operator/system", "System"],
          ...(roles.includes("operator-admin") ? [["/operator/audit", "Operator audit"]] : []),
        ] as [string, string][])
      : []),
  ];
  // an operator without a tenant lands on the NOC view at "/"
  const here = !access.tenant && access.operator && path === "/" ? "/operator/noc" : path;
  const active = (to: string) => (to === "/" ? here === "/" : here === to || here.startsWith(to + "/"));
  return (
    <AccessContext.Provider value={access}>
      <div className="shell">
        <nav className="nav" aria-label="Main">
          <div className="brand">Pulse</div>
          {nav.map(([to, label]) => (
            <Link key={to} to={to} className={active(to) ? "active" : ""}>
              {label}
            </Link>
          ))}
        </nav>
        <div className="main">
          <header className="topbar">
            <span className="who" data-testid="who" title={`user ${me.data.subject} (${me.data.via})`}>
              Signed in as {roles.join(", ")}
              {!access.canWrite && access.tenant && <span className="tag">read-only</span>}
            </span>
            <span className="spacer" />
            <button className="btn small" onClick={toggleTheme} aria-label="Toggle dark theme">
              {theme === "dark" ? "Light" : "Dark"} theme
            </button>
            <button className="btn small" onClick={logout}>
              Log out
            </button>
            {me.data.via === "local" && (
              <button className="btn small" onClick={() => logoutEverywhere()} title="End every session of this account, in every browser">
                Log out everywhere
              </button>
            )}
          </header>
          <main className="content">{page(path, access)}</main>
        </div>
      </div>
    </AccessContext.Provider>
  );
}
