"""Scale-out: worker groups (local, Ray) that run the same workers one per rank."""
