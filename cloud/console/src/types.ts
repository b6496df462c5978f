// Shapes of the cloud's JSON answers (see the OpenAPI document at /docs).

export type Me = { subject: string; tenant_id: string | null; roles: string[]; via: string };

export type DeviceStatus = "provisioned" | "active" | "disabled" | "decommissioned";

export type Device = {
  id: string;
  device_id: string;
  name: string;
  site_id: string | null;
  gateway_id: string | null;
  tags: string[];
  status: DeviceStatus;
  attributes: Record<string, unknown>;
  created_at: string;
  updated_at: string;
  decommissioned_at: string | null;
};

export type DevicePage = { items: Device[]; next_cursor: string | null };

export type Site = {
  id: string;
  name: string;
  address: string;
  latitude: number | null;
  longitude: number | null;
  created_at: string;
  updated_at: string;
};

export type Credential = { id: string; created_at: string; rotated_at: string | null; revoked_at: string | null };
export type IssuedCredential = { id: string; device_id: string; token: string };

/** [bucket start ms, mean, min, max, count] */
export type Point = [number, number, number, number, number];
export type Series = { device: string; device_id: string; metric: string; from: string; to: string; bucket_s: number; points: Point[] };
export type Latest = { device: string; device_id: string; last_seen: string | null; metrics: { name: string; value: number | boolean; time: string }[] };

export type FleetSummary = { devices: number; devices_by_status: Record<DeviceStatus, number>; sites: number };
export type Tenant = { id: string; slug: string; name: string; created_at: string; devices: number };
