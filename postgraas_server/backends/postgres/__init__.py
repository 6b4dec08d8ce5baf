"""What the backends whose instances are PostgreSQL databases share: tenants (a role and the database
it owns), the logins that prove and check them, and the warm pool's hand-over."""
