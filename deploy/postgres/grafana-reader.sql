-- A read-only login for Grafana's trading dashboard (deploy/grafana/dashboards/trading.json).
--
--   psql -v reader=grafana_reader -v password='...' -f deploy/postgres/grafana-reader.sql
--
-- Run it as the role that runs `signal-worker migrate` (the owner of the tables), in the
-- worker's database: SELECT on the tables there now and, through default privileges, on
-- those later migrations create. Its sessions are read-only by default as well.
CREATE ROLE :"reader" LOGIN PASSWORD :'password';
GRANT USAGE ON SCHEMA public TO :"reader";
GRANT SELECT ON ALL TABLES IN SCHEMA public TO :"reader";
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO :"reader";
ALTER ROLE :"reader" SET default_transaction_read_only = on;
