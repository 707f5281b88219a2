"""SQLAlchemy 2 ORM (psycopg 3 driver, server-side prepared statements) through pgseal-proxy.

The schema comes from the ORM's own migration step (metadata.create_all); then CRUD through a
Session: inserts with RETURNING, lookups by an encrypted unique column (=, IN), relationships
loaded by foreign key, updates, deletes, a duplicate refused by the blind-index unique index, and
an ORDER BY on an encrypted column refused with a clear error.

usage: sqlalchemy_orm.py URL EMAIL0 EMAIL1 EMAIL2 NAME0 NAME1 NAME2 RENAMED NOTE
"""
import datetime
import sys
from typing import List, Optional

from sqlalchemy import Date, ForeignKey, String, Text, create_engine, func, select, exc
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship

url = sys.argv[1]
emails = sys.argv[2:5]
names = sys.argv[5:8]
renamed = sys.argv[8]
note = sys.argv[9]


class Base(DeclarativeBase):
    pass


class Patient(Base):
    __tablename__ = "sa_patients"
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(200), unique=True, index=True)  # protected, unique
    name: Mapped[Optional[str]] = mapped_column(String(200))  # protected
    born: Mapped[Optional[datetime.date]] = mapped_column(Date)  # protected
    ward: Mapped[str] = mapped_column(String(20))  # plaintext
    visits: Mapped[List["Visit"]] = relationship(
        back_populates="patient", cascade="all, delete-orphan", order_by="Visit.id"
    )


class Visit(Base):
    __tablename__ = "sa_visits"
    id: Mapped[int] = mapped_column(primary_key=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("sa_patients.id"))
    note: Mapped[str] = mapped_column(Text)  # protected
    patient: Mapped[Patient] = relationship(back_populates="visits")


# prepare_threshold=1: psycopg prepares every statement server-side from its second execution.
engine = create_engine(url, connect_args={"prepare_threshold": 1})
Base.metadata.create_all(engine)

with Session(engine) as s:
    for i in range(3):
        s.add(
            Patient(
                email=emails[i],
                name=names[i],
                born=datetime.date(1980 + i, 1, 2),
                ward="w%d" % (i % 2),
                visits=[Visit(note=f"{note}-{i}-a"), Visit(note=f"{note}-{i}-b")],
            )
        )
    s.commit()

with Session(engine) as s:
    for _ in range(3):  # repeated: the prepared statement is reused
        p = s.scalars(select(Patient).where(Patient.email == emails[1])).one()
        assert (p.name, p.born) == (names[1], datetime.date(1981, 1, 2)), "lookup"
        s.expire_all()
    assert [v.note for v in p.visits] == [f"{note}-1-a", f"{note}-1-b"], "relationship"
    both = s.scalars(
        select(Patient).where(Patient.email.in_([emails[0], emails[2]])).order_by(Patient.id)
    ).all()
    assert [x.name for x in both] == [names[0], names[2]], "IN"
    by_ward = s.execute(
        select(Patient.ward, func.count()).group_by(Patient.ward).order_by(Patient.ward)
    ).all()
    assert [tuple(r) for r in by_ward] == [("w0", 2), ("w1", 1)], "group by a plaintext column"
    visit = s.scalars(select(Visit).where(Visit.patient_id == both[0].id).order_by(Visit.id)).first()
    assert visit.patient.email == emails[0], "many-to-one"

with Session(engine) as s:
    p = s.scalars(select(Patient).filter_by(email=emails[0])).one()
    p.name = renamed
    s.commit()
    assert s.scalars(select(Patient.name).where(Patient.id == p.id)).one() == renamed, "update"
    gone = s.scalars(select(Patient).where(Patient.email == emails[2])).one()
    s.delete(gone)
    s.commit()
    assert s.scalars(select(func.count()).select_from(Patient)).one() == 2, "delete"
    assert s.scalars(select(func.count()).select_from(Visit)).one() == 4, "cascade"

with Session(engine) as s:
    s.add(Patient(email=emails[1], name="duplicate", ward="w0"))
    try:
        s.commit()
        raise SystemExit("a duplicate email was accepted")
    except exc.IntegrityError:
        s.rollback()
    try:
        s.scalars(select(Patient).order_by(Patient.email)).all()
        raise SystemExit("ORDER BY email was not refused")
    except exc.NotSupportedError as e:
        assert "sa_patients.email" in str(e), str(e)
        s.rollback()
    rows = s.execute(select(Patient.email, Patient.name).order_by(Patient.id)).all()
    assert [tuple(r) for r in rows] == [(emails[0], renamed), (emails[1], names[1])], "final"

print("sqlalchemy ok")
