from django.contrib.auth import views
from django.http import HttpResponse
from django.urls import path


def home(request):
    return HttpResponse(request.user.get_username() or "anonymous", content_type="text/plain")


urlpatterns = [
    path("", home),
    path("login/", views.LoginView.as_view()),
    path("logout/", views.LogoutView.as_view()),
]
