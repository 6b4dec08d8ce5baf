"""Run by Django's runner (``python manage.py test``) and by pytest-django (``python -m pytest``)."""

from django.db import IntegrityError, connection, transaction
from django.db.models import Count, Sum
from django.test import TestCase

from .models import Author, Book


class BookTests(TestCase):
    def test_a_book_is_written_and_read_back(self):
        author = Author.objects.create(name="Ursula K. Le Guin")
        Book.objects.create(author=author, title="The Dispossessed", pages=387)
        book = Book.objects.select_related("author").get(title="The Dispossessed")
        self.assertEqual((book.author.name, book.pages), ("Ursula K. Le Guin", 387))

    def test_the_constraint_holds_and_aggregates_are_postgres_own(self):
        author = Author.objects.create(name="Stanisław Lem")
        Book.objects.create(author=author, title="Solaris", pages=204)
        Book.objects.create(author=author, title="The Cyberiad", pages=295)
        with self.assertRaises(IntegrityError), transaction.atomic():
            Book.objects.create(author=author, title="Solaris", pages=1)
        totals = Author.objects.annotate(n_books=Count("books"), n_pages=Sum("books__pages")).get()
        self.assertEqual((totals.n_books, totals.n_pages), (2, 499))
        self.assertEqual(connection.vendor, "postgresql")
