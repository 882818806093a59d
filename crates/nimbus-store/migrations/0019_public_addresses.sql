-- Public addresses handed to instances from their region's pool (`[[public_addresses]]`,
-- issue 17). An address belongs to at most one live instance; rows of terminated instances are
-- reused.
CREATE TABLE public_addresses (
    region TEXT NOT NULL,
    address TEXT NOT NULL,
    instance_id TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (region, address)
);
CREATE INDEX public_addresses_instance ON public_addresses(instance_id);
