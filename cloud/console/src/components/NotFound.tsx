import { Link } from "./Link";

export function NotFound({ what = "page" }: { what?: string }) {
  return (
    <div className="notfound" data-testid="not-found">
      <h1>404</h1>
      <p>No such {what} in your tenant.</p>
      <Link to="/">Back to the overview</Link>
    </div>
  );
}
